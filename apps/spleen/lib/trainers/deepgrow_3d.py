"""Train deepgrow_3d with simulated clicks (MONAI deepgrow interaction transforms).

Each sample starts from MONAI's initial seed point inside the object (`AddInitialSeedPointd`); then,
for a random number of rounds, the network's current prediction is compared with the truth
(`FindDiscrepancyRegionsd`) and a corrective click is added in the largest error (`AddRandomGuidanced`).
Crops are made by the inference pre-processing itself, at the scales inference meets: half of them
centred on the click, 96–320 mm wide (the first pass and the zoom-outs, often cutting the object, so the
network learns to follow it to the crop's border, which triggers a zoom-out), half holding the whole
object with a margin (what a zoom-out ends on). Every crop is augmented (`interactive.augment_crop`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from monai.apps.deepgrow.transforms import AddInitialSeedPointd, AddRandomGuidanced, FindDiscrepancyRegionsd

from aiaa_core.phantoms import LABELS
from aiaa_core.transforms import ZOOM_BOX, crop_box, fit_in_image
from lib.infers.deepgrow_3d import DeepGrow3D
from lib.infers.interactive import click_preprocessing
from lib.networks import deepgrow_network

from .interactive import WARM_START_ENV, ClickTrainTask, augmented, batch, run_pipeline

MAX_CLICKS = 3
BATCH_SIZE = 2
CLICK_CENTRED_MM = (96.0, 320.0)  # crop widths of the click-centred training crops (log-uniform)
OBJECT_MARGIN = (1.1, 2.0)  # whole-object crops: the object's largest extent times this


def training_box(obj, image, click: list[int], rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """A crop box as inference could make it: click-centred at a random width, or around the whole object."""
    shape = np.asarray(image.shape[1:], dtype=int)
    spacing = np.asarray(image.pixdim, dtype=float)[:3]
    if rng.random() < 0.5:
        width = float(np.exp(rng.uniform(*np.log(CLICK_CENTRED_MM))))
        points = np.asarray([click], dtype=float)
        start, end = crop_box(points, shape, spacing, DeepGrow3D.padding_mm, width, DeepGrow3D.pad_beyond_image)
        return start.tolist(), end.tolist()
    low, high = np.asarray(obj.start), np.asarray(obj.end)
    width = float(((high - low) * spacing).max() * rng.uniform(*OBJECT_MARGIN))
    size = np.ceil(width / spacing).astype(int)
    if not DeepGrow3D.pad_beyond_image:
        size = np.minimum(size, shape)
    centre = (low + high) / 2 + rng.uniform(-0.1, 0.1, 3) * size
    start = fit_in_image(np.round(centre - size / 2).astype(int), size, shape)
    return start.tolist(), (start + size).tolist()


def make_sample(obj, items: list[dict], rng: np.random.Generator, seed_transform, jitter: bool) -> dict:
    """A crop around MONAI's initial seed point of `obj`, with guidance for that one click."""
    mask = obj.mask(items)
    start, end = np.asarray(obj.start), np.asarray(obj.end)
    sub = np.asarray(mask[:, start[0] : end[0], start[1] : end[1], start[2] : end[2]])
    seed = json.loads(seed_transform({"label": sub})["guidance"])[0][0]  # [distance, i, j, k] in the sub-volume
    click = (np.asarray(seed[1:]) + start).tolist()
    transforms = click_preprocessing(
        ("image", "label"),
        ("trilinear", "nearest"),
        DeepGrow3D.box_points,
        DeepGrow3D.points_keys,
        DeepGrow3D.crop_size,
        DeepGrow3D.padding_mm,
        DeepGrow3D.min_size_mm,
        DeepGrow3D.pad_beyond_image,
    )
    image = items[obj.item]["image"]
    data = {"image": image, "label": mask, "foreground": [click], "background": []}
    if not jitter:
        return run_pipeline(data, transforms)
    data[ZOOM_BOX] = training_box(obj, image, click, rng)
    return augmented(data, transforms, rng, thin_scan_around="foreground")


def add_corrective_clicks(network: torch.nn.Module, samples: list[dict], rounds: int, click_transform) -> None:
    """`rounds` times: predict, find the discrepancy, add a click in it (MONAI's deepgrow interaction)."""
    network.eval()
    device = next(network.parameters()).device
    for _ in range(rounds):
        with torch.no_grad():
            logits = network(batch(samples, DeepGrow3D.points_keys, DeepGrow3D.sigma)[0].to(device)).cpu()
        for sample, logit in zip(samples, logits, strict=True):
            sample["pred"] = logit.argmax(0, keepdim=True).numpy().astype(np.float32)
            sample["label"] = np.asarray(sample["label"])
            sample.update(FindDiscrepancyRegionsd(label="label", pred="pred", discrepancy="discrepancy")(sample))
            sample["probability"] = 1.0
            sample["guidance"] = monai_guidance([sample[k] for k in DeepGrow3D.points_keys])
            clicks = json.loads(click_transform(sample)["guidance"])
            for key, points in zip(DeepGrow3D.points_keys, clicks, strict=True):
                sample[key] = [p[1:] for p in points if p[0] >= 0]


def monai_guidance(point_lists: list[list[list[int]]]) -> list[list[list[int]]]:
    """MONAI's deepgrow guidance layout: one list per kind of [d, i, j, k], padded with [-1, ...] to one length."""
    length = max(1, *(len(points) for points in point_lists))
    return [[[0, *p] for p in points] + [[-1] * 4] * (length - len(points)) for points in point_lists]


def interaction_rounds(rng: np.random.Generator) -> int:
    """No corrective click half of the time (learn from one click), else 1..MAX_CLICKS rounds."""
    return 0 if rng.random() < 0.5 else int(rng.integers(1, MAX_CLICKS + 1))


class DeepGrow3DTrainer(ClickTrainTask):
    """deepgrow_3d: one click from MONAI's initial seed point, then 0..MAX_CLICKS corrective rounds per step
    (MONAI's deepgrow interaction, run by `iteration` with the current network); validation with one click.
    Starts from the served weights (`pretrained`), else `$AIAA_WARM_START`, else the extreme-points model."""

    points_keys = DeepGrow3D.points_keys
    sigma = DeepGrow3D.sigma
    # Blob-like objects only: tubes (aorta, IVC) and the ribs are not what a click-from-the-centre model is for.
    skip_phantom_labels = frozenset(LABELS[name] for name in ("aorta", "ivc", "rib"))
    min_volume_ml = 5.0

    def __init__(self, model_dir: str, **kwargs):
        super().__init__(model_dir, deepgrow_network, "Fine-tune DeepGrow 3D with simulated clicks", **kwargs)

    def training_data(self, request: dict, labelled: list[dict], rng: np.random.Generator) -> tuple[list, list]:
        seed = int(request["seed"])
        self.seed_transform = AddInitialSeedPointd(label="label", guidance="guidance")
        self.seed_transform.set_random_state(seed=seed)
        self.click_transform = AddRandomGuidanced(
            guidance="guidance", discrepancy="discrepancy", probability="probability"
        )
        self.click_transform.set_random_state(seed=seed)
        return super().training_data(request, labelled, rng)

    def make_sample(self, obj, items: list[dict], jitter: bool) -> dict:
        return make_sample(obj, items, self.pool.rng, self.seed_transform, jitter)

    def network(self, context):
        network = deepgrow_network()
        served = Path(self._publish_to or self._model_dir).parent  # the app's model folder (or --output's)
        warm_start(network, Path(os.environ.get(WARM_START_ENV) or served / "extreme_points.pt"))
        return network

    def iteration(self, engine, samples: list[dict]) -> dict:
        add_corrective_clicks(engine.network, samples, interaction_rounds(self.pool.rng), self.click_transform)
        return super().iteration(engine, samples)


def warm_start(network: torch.nn.Module, extreme_points_weights: Path) -> None:
    """Start from the trained extreme-points UNet (same network, one input channel fewer): it already
    segments the object a heatmap points at. Its CT and heatmap input filters seed the CT and foreground
    channels; the background-click channel starts at zero. Deepgrow weights load as they are."""
    if not extreme_points_weights.is_file():
        return
    source = torch.load(extreme_points_weights, map_location="cpu", weights_only=True)
    target = network.state_dict()
    for key, value in source.items():
        if target[key].shape == value.shape:
            target[key] = value
        else:  # the first convolution(s): (out, 2, ...) → (out, 3, ...)
            target[key] = torch.zeros_like(target[key])
            target[key][:, : value.shape[1]] = value
    network.load_state_dict(target)
    print(f"warm start from {extreme_points_weights}", flush=True)
