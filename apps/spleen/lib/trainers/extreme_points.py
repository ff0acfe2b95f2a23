"""Train extreme_points: jittered extreme points of each object's mask, crops as inference makes them,
augmented as real scans differ (`interactive.augment_crop`); `$AIAA_WARM_START` names weights to start from."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from monai.transforms.utils import get_extreme_points
from monai.utils import set_determinism

from lib.infers.extreme_points import ExtremePoints
from lib.infers.interactive import click_preprocessing
from lib.networks import extreme_points_network

from .interactive import WARM_START_ENV, ObjectPool, augmented, batch, run_pipeline, validation_dice
from .loop import fit

BATCH_SIZE = 2
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


def train(
    model_path: Path,
    *,
    data_dir: Path | None = None,
    epochs: int = 20,
    steps_per_epoch: int = 40,
    seed: int = 0,
    num_train: int = 24,
    num_val: int = 4,
) -> dict:
    """Train on phantom organs (+ real CT organs when present); validate on held-out phantom spleens."""
    set_determinism(seed)
    pool = ObjectPool(seed, num_train, num_val)
    rng = pool.rng
    val_samples = [make_sample(o, pool.val_items, rng, jitter=False) for o in pool.val_objects]

    def next_batch(_network) -> tuple[torch.Tensor, torch.Tensor]:
        samples = [make_sample(pool.sample(), pool.items, rng, jitter=True) for _ in range(BATCH_SIZE)]
        return batch(samples, ExtremePoints.points_keys, ExtremePoints.sigma)

    def validate(network) -> float:
        return validation_dice(network, val_samples, ExtremePoints.points_keys, ExtremePoints.sigma)

    network = extreme_points_network()
    if os.environ.get(WARM_START_ENV):
        network.load_state_dict(torch.load(os.environ[WARM_START_ENV], map_location="cpu", weights_only=True))
        print(f"warm start from {os.environ[WARM_START_ENV]}", flush=True)
    return fit(
        network,
        next_batch,
        validate,
        model_path,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        checkpoint=model_path.with_suffix(".ckpt"),
    )
