"""Train segmentation_spleen on synthetic phantoms (default) or an MSD Task09 folder.

The training pipeline reuses the inference pre-processing (`lib.infers.segmentation_spleen`) so
both see the same grid and intensities; only random crops and intensity jitter are added.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from monai.data import CacheDataset, DataLoader
from monai.inferers import sliding_window_inference
from monai.transforms import (
    Compose,
    LabelFilterd,
    RandCropByPosNegLabeld,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SpatialPadd,
)
from monai.utils import set_determinism

from lib.infers.segmentation_spleen import ROI_SIZE, preprocessing
from lib.networks import segmentation_network
from lib.transforms import LoadImageOrTensord

from .data import VALIDATION_SEED_OFFSET, msd_items, phantom_items
from .loop import dice_score, fit

PATCH = (64, 64, 64)
SPLEEN = 1  # spleen label value in the phantoms and in MSD Task09


def train(
    model_path: Path,
    *,
    data_dir: Path | None = None,
    epochs: int = 20,
    steps_per_epoch: int = 40,
    num_train: int = 32,
    num_val: int = 6,
    seed: int = 0,
) -> dict:
    """Train, keep the best validation checkpoint at `model_path`, and return the run's figures."""
    set_determinism(seed)
    rng = np.random.default_rng(seed)
    if data_dir is None:
        train_items = phantom_items(range(seed, seed + num_train), rng)
        val_items = phantom_items(range(VALIDATION_SEED_OFFSET + seed, VALIDATION_SEED_OFFSET + seed + num_val), rng)
    else:
        items = msd_items(Path(data_dir))
        split = max(1, len(items) // 5)
        train_items, val_items = items[split:], items[:split]

    deterministic = [
        LoadImageOrTensord(keys=("image", "label")),
        *preprocessing(keys=("image", "label"), modes=("bilinear", "nearest")),
        LabelFilterd(keys="label", applied_labels=[SPLEEN]),
    ]
    random = [
        SpatialPadd(keys=("image", "label"), spatial_size=PATCH),
        RandCropByPosNegLabeld(
            keys=("image", "label"), label_key="label", spatial_size=PATCH, pos=2, neg=1, num_samples=2
        ),
        RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
        RandShiftIntensityd(keys="image", offsets=0.05, prob=0.5),
    ]
    train_ds = CacheDataset(train_items, Compose(deterministic + random), progress=False)
    val_ds = CacheDataset(val_items, Compose(deterministic), progress=False)
    loader = DataLoader(train_ds, batch_size=1, shuffle=True, num_workers=0)
    batches = iter(loader)

    def next_batch(_network) -> tuple[torch.Tensor, torch.Tensor]:
        nonlocal batches
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        return batch["image"], batch["label"]

    def validate(network) -> float:
        scores = [
            dice_score(
                sliding_window_inference(item["image"][None], ROI_SIZE, 1, network, overlap=0.25), item["label"][None]
            )
            for item in val_ds
        ]
        return float(np.mean(scores))

    return fit(segmentation_network(), next_batch, validate, model_path, epochs=epochs, steps_per_epoch=steps_per_epoch)
