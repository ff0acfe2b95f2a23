"""Train extreme_points: jittered extreme points of each object's mask, crops as inference makes them,
augmented as real scans differ (`interactive.augment_crop`); `$AIAA_WARM_START` names weights to start from."""

from __future__ import annotations

import os

import numpy as np
import torch
from monai.transforms.utils import get_extreme_points

from lib.infers.extreme_points import ExtremePoints
from lib.infers.interactive import click_preprocessing
from lib.networks import extreme_points_network

from .interactive import WARM_START_ENV, ClickTrainTask, augmented, run_pipeline

JITTER_VOXELS = 1.5  # clinicians' extreme points are a voxel or two off the true boundary


def make_sample(obj, items: list[dict], rng: np.random.Generator, jitter: bool) -> dict:
    mask = obj.mask(items)
    start, end = np.asarray(obj.start), np.asarray(obj.end)
    sub = np.asarray(mask[0, start[0] : end[0], start[1] : end[1], start[2] : end[2]])
    state = np.random.RandomState(int(rng.integers(2**31)))
    points = np.asarray(get_extreme_points(sub, rand_state=state), dtype=float) + start
    if jitter:
        points += rng.normal(0.0, JITTER_VOXELS, size=points.shape)
    padding = rng.uniform(10.0, 30.0) if jitter else ExtremePoints.padding_mm
    transforms = click_preprocessing(
        ("image", "label"),
        ("trilinear", "nearest"),
        ExtremePoints.box_points,
        ExtremePoints.points_keys,
        ExtremePoints.crop_size,
        padding,
        0.0,
        ExtremePoints.pad_beyond_image,
    )
    data = {"image": items[obj.item]["image"], "label": mask, "points": points.round().tolist()}
    return augmented(data, transforms, rng) if jitter else run_pipeline(data, transforms)


class ExtremePointsTrainer(ClickTrainTask):
    """extreme_points: jittered extreme points of each object, validated on the exact ones. Starts from the
    served weights (`pretrained`), else `$AIAA_WARM_START` when set, else from scratch."""

    points_keys = ExtremePoints.points_keys
    sigma = ExtremePoints.sigma

    def __init__(self, model_dir: str, **kwargs):
        super().__init__(model_dir, extreme_points_network, "Fine-tune extreme points (DExtr3D style)", **kwargs)

    def make_sample(self, obj, items: list[dict], jitter: bool) -> dict:
        return make_sample(obj, items, self.pool.rng, jitter)

    def network(self, context):
        network = extreme_points_network()
        if os.environ.get(WARM_START_ENV):
            network.load_state_dict(torch.load(os.environ[WARM_START_ENV], map_location="cpu", weights_only=True))
            print(f"warm start from {os.environ[WARM_START_ENV]}", flush=True)
        return network
