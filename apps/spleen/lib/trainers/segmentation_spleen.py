"""Train segmentation_spleen on synthetic phantoms (default) or an MSD Task09 folder.

The training pipeline reuses the inference pre-processing (`lib.infers.segmentation_spleen`) so
both see the same grid and intensities; only random crops and intensity jitter are added.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from monai.data import CacheDataset, DataLoader
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from monai.transforms import (
    Compose,
    LabelFilterd,
    RandCropByPosNegLabeld,
    RandScaleIntensityd,
    RandShiftIntensityd,
    SpatialPadd,
)
from monai.utils import set_determinism
from tqdm import tqdm

from lib.infers.segmentation_spleen import ROI_SIZE, preprocessing
from lib.networks import segmentation_network
from lib.transforms import LoadImageOrTensord

logger = logging.getLogger(__name__)

PATCH = (64, 64, 64)
SPLEEN = 1  # spleen label value in the phantoms and in MSD Task09


def phantom_items(seeds: range, rng: np.random.Generator) -> list[dict]:
    """Phantoms at random spacings and orientations, as the server would receive them."""
    from server.imageio import to_metatensor
    from server.phantoms import ORIENTATIONS, make_phantom

    items = []
    for seed in tqdm(seeds, desc="phantoms", leave=False):
        spacing = tuple(float(s) for s in rng.uniform(1.5, 4.0, size=3))
        size = tuple(int(np.ceil(fov / s)) for fov, s in zip((360.0, 300.0, 220.0), spacing, strict=True))
        phantom = make_phantom(seed, size=size, spacing=spacing, orientation=ORIENTATIONS[seed % len(ORIENTATIONS)])
        items.append({"image": to_metatensor(phantom.image), "label": to_metatensor(phantom.label)})
    return items


def msd_items(data_dir: Path) -> list[dict]:
    """Image/label paths of an MSD Task09-style folder (dataset.json 'training' list)."""
    dataset = json.loads((data_dir / "dataset.json").read_text())
    return [
        {"image": str(data_dir / item["image"]), "label": str(data_dir / item["label"])}
        for item in dataset["training"]
    ]


def train(
    model_path: Path,
    *,
    data_dir: Path | None = None,
    epochs: int = 20,
    steps_per_epoch: int = 40,
    num_train: int = 32,
    num_val: int = 6,
    seed: int = 0,
    learning_rate: float = 2e-3,
) -> dict:
    """Train, keep the best validation checkpoint at `model_path`, and return the run's figures."""
    set_determinism(seed)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    if data_dir is None:
        train_items = phantom_items(range(seed, seed + num_train), rng)
        val_items = phantom_items(range(100_000 + seed, 100_000 + seed + num_val), rng)
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

    network = segmentation_network()
    optimizer = torch.optim.AdamW(network.parameters(), lr=learning_rate, weight_decay=1e-5)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    dice_metric = DiceMetric(include_background=False)

    best, history, started = -1.0, [], time.time()
    model_path.parent.mkdir(parents=True, exist_ok=True)
    for epoch in range(1, epochs + 1):
        network.train()
        losses = []
        batches = iter(loader)
        for _ in tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{epochs}", leave=False):
            try:
                batch = next(batches)
            except StopIteration:
                batches = iter(loader)
                batch = next(batches)
            optimizer.zero_grad()
            loss = loss_fn(network(batch["image"]), batch["label"])
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())

        network.eval()
        dice_metric.reset()
        with torch.no_grad():
            for item in val_ds:
                logits = sliding_window_inference(item["image"][None], ROI_SIZE, 1, network, overlap=0.25)
                pred = torch.nn.functional.one_hot(logits.argmax(1), 2).permute(0, 4, 1, 2, 3)
                truth = torch.nn.functional.one_hot(item["label"][None, 0].long(), 2).permute(0, 4, 1, 2, 3)
                dice_metric(pred, truth)
        dice = float(dice_metric.aggregate().item())
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "val_dice": dice})
        logger.info("epoch %d: loss %.4f, validation Dice %.4f", epoch, np.mean(losses), dice)
        print(f"epoch {epoch}/{epochs}: loss {np.mean(losses):.4f}  validation Dice {dice:.4f}", flush=True)
        if dice > best:
            best = dice
            torch.save(network.state_dict(), model_path)

    return {"best_val_dice": best, "epochs": epochs, "seconds": round(time.time() - started, 1), "history": history}
