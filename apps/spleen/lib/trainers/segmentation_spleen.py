"""Train segmentation_spleen on phantoms (and optionally real CTs), for any slice thickness and contrast phase.

The training pipeline reuses the inference grid (`lib.infers.segmentation_spleen`: RAS, 3 mm, CT window) so
both see the same voxels. Between the grid and the window come the augmentations real CT needs: HU shift
and scale (contrast phase, calibration), and after the crop thick slices (3–8 mm series) and noise.
Phantoms span contrast doses 0.7–1.6 (spleen ~87–165 HU) by default; `--unenhanced-share` adds unenhanced
ones. With `--shared-data DIR` the real CTs there (TotalSegmentator masks, label 1 spleen) are drawn for
about a quarter of the samples; `--holdout` keeps some out (leave-one-patient-out).

    .venv/bin/python -m lib.trainers.segmentation_spleen --output FILE [--holdout example_ct] [--init FILE]
        [--epochs 4 --steps 80 --time-limit-min 45]     (run from apps/spleen; resumes from FILE.ckpt)

`aiaa train segmentation_spleen` runs it with the defaults (phantoms only, no warm start). With two
patients, real CT did not generalise (apps/spleen/README.md), so it is not in the defaults.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from monai.data import CacheDataset, DataLoader
from monai.inferers import sliding_window_inference
from monai.transforms import (
    Compose,
    LabelFilterd,
    RandCropByPosNegLabeld,
    RandGaussianNoised,
    SpatialPadd,
)
from monai.utils import set_determinism

from lib.infers.segmentation_spleen import ROI_SIZE, TARGET_SPACING, ct_window, working_grid
from lib.networks import segmentation_network
from aiaa_core.transforms import LoadImageOrTensord
from server.imageio import to_metatensor

from .augment import RandHUShiftScaled, RandThickSlicesd
from .data import REAL_CASES, VALIDATION_SEED_OFFSET, msd_items, phantom_items, read_case
from .loop import dice_score, fit

PATCH = (64, 64, 64)
SPLEEN = 1  # spleen label value in the phantoms, in MSD Task09 and in TotalSegmentator's masks
SHARED_DATA = Path(__file__).resolve().parents[4].parent / "shared" / "data"  # ../shared/data beside the repo
REAL_SHARE = 0.25  # of the samples drawn, about this many come from the real CTs


def scan_name(image_name: str) -> str:
    """example_ct, example_ct_dicom: the names --holdout takes."""
    return Path(image_name).name.removesuffix(".nii.gz")


def train(
    model_path: Path,
    *,
    data_dir: Path | None = None,
    epochs: int = 20,
    steps_per_epoch: int = 40,
    num_train: int = 32,
    num_val: int = 6,
    seed: int = 0,
    shared_data: Path | None = None,
    holdout: tuple[str, ...] = (),
    init: Path | None = None,
    time_limit_s: float | None = None,
    learning_rate: float = 2e-3,
    hu_shift: float = 30.0,
    dose_range: tuple[float, float] = (0.7, 1.6),
    unenhanced_share: float = 0.0,
) -> dict:
    """Train, keep the best validation checkpoint at `model_path`, and return the run's figures.

    `holdout`: real scans (by `scan_name`) kept out of training; each epoch prints their Dice (information
    only: the best epoch is chosen on validation phantoms). Resumes from `model_path` + `.ckpt`.
    """
    set_determinism(seed)
    rng = np.random.default_rng(seed)
    if data_dir is None:
        contrast = {"varied_contrast": True, "dose_range": dose_range, "unenhanced_share": unenhanced_share}
        train_items = phantom_items(range(seed, seed + num_train), rng, **contrast)
        val_seeds = range(VALIDATION_SEED_OFFSET + seed, VALIDATION_SEED_OFFSET + seed + num_val)
        val_items = phantom_items(val_seeds, rng, **contrast)
    else:
        items = msd_items(Path(data_dir))
        split = max(1, len(items) // 5)
        train_items, val_items = items[split:], items[:split]
    real, held_out = [], []
    if shared_data is not None and shared_data.is_dir():
        for image_name, label_name in REAL_CASES:
            if (shared_data / image_name).exists() and (shared_data / label_name).exists():
                image, label = read_case(shared_data, image_name, label_name)
                item = {"image": to_metatensor(image), "label": to_metatensor(label)}
                (held_out if scan_name(image_name) in holdout else real).append((scan_name(image_name), item))
    if real:
        repeat = max(1, round(REAL_SHARE * len(train_items) / ((1 - REAL_SHARE) * len(real))))
        train_items = train_items + [item for _, item in real] * repeat
    print(f"training on {len(train_items)} items: real {[n for n, _ in real]}, held out {[n for n, _ in held_out]}")

    grid = [
        LoadImageOrTensord(keys=("image", "label")),
        *working_grid(keys=("image", "label"), modes=("bilinear", "nearest")),
        LabelFilterd(keys="label", applied_labels=[SPLEEN]),
    ]
    augment = [
        RandHUShiftScaled(keys="image", shift=hu_shift, scale=0.15 * hu_shift / 80.0, prob=0.8),
        *ct_window(),
        SpatialPadd(keys=("image", "label"), spatial_size=PATCH),
        RandCropByPosNegLabeld(
            keys=("image", "label"), label_key="label", spatial_size=PATCH, pos=2, neg=1, num_samples=2
        ),
        RandThickSlicesd(keys="image", spacing=TARGET_SPACING[2], thickness=(3.0, 8.0), prob=0.5),
        RandGaussianNoised(keys="image", prob=0.3, std=0.04),
    ]
    train_ds = CacheDataset(train_items, Compose(grid + augment), progress=False)
    val_ds = CacheDataset(val_items, Compose(grid + ct_window()), progress=False)
    held_ds = CacheDataset([item for _, item in held_out], Compose(grid + ct_window()), progress=False)
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

    def dice_on(network, item) -> float:
        logits = sliding_window_inference(item["image"][None], ROI_SIZE, 1, network, overlap=0.25)
        return dice_score(logits, item["label"][None])

    def validate(network) -> float:
        if held_ds:
            scores = ", ".join(
                f"{name} {dice_on(network, item):.3f}" for (name, _), item in zip(held_out, held_ds, strict=True)
            )
            print(f"  held-out real CT Dice (working grid, not used for selection): {scores}", flush=True)
        return float(np.mean([dice_on(network, item) for item in val_ds]))

    network = segmentation_network()
    if init is not None:
        network.load_state_dict(torch.load(init, weights_only=True))
    return fit(
        network,
        next_batch,
        validate,
        model_path,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        checkpoint=model_path.with_suffix(".ckpt"),
        time_limit_s=time_limit_s,
        learning_rate=learning_rate,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-val", type=int, default=6, help="validation phantoms (seeds 100000..)")
    parser.add_argument("--holdout", default="", help="real scans kept out, comma separated (example_ct, ...)")
    parser.add_argument("--init", type=Path, help="warm start from these weights")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (cosine schedule)")
    parser.add_argument("--hu-shift", type=float, default=30.0, help="HU shift augmentation, ± (scale ±15 %% at 80)")
    parser.add_argument("--doses", default="0.7,1.6", help="phantom contrast doses (1.0: seeded maximum)")
    parser.add_argument("--unenhanced-share", type=float, default=0.0, help="phantoms without contrast")
    parser.add_argument("--shared-data", default="none", help=f"real CTs to train on too (e.g. {SHARED_DATA})")
    parser.add_argument("--time-limit-min", type=float, help="stop this sitting after the epoch that passes it")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the box is shared)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = train(
        args.output,
        epochs=args.epochs,
        steps_per_epoch=args.steps,
        seed=args.seed,
        num_val=args.num_val,
        shared_data=None if args.shared_data == "none" else Path(args.shared_data),
        holdout=tuple(h for h in args.holdout.split(",") if h),
        init=args.init,
        learning_rate=args.lr,
        hu_shift=args.hu_shift,
        dose_range=tuple(float(d) for d in args.doses.split(",")),
        unenhanced_share=args.unenhanced_share,
        time_limit_s=args.time_limit_min * 60 if args.time_limit_min else None,
    )
    print({k: v for k, v in report.items() if k != "history"})


if __name__ == "__main__":
    sys.exit(main())
