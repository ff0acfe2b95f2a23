"""Train segmentation_spleen on phantoms (and optionally real CTs), for any slice thickness and contrast phase.

The training pipeline reuses the inference grid (`lib.infers.segmentation_spleen`: RAS, 3 mm, CT window) so
both see the same voxels. Between the grid and the window come the augmentations real CT needs: HU shift
and scale (contrast phase, calibration), and after the crop thick slices (3–8 mm series) and noise.
Phantoms span contrast doses 0.7–1.6 (spleen ~87–165 HU) by default; `--unenhanced-share` adds unenhanced
ones. With `--shared-data DIR` the real CTs there (TotalSegmentator masks, label 1 spleen) are drawn for
about a quarter of the samples; `--holdout` keeps some out (leave-one-patient-out).

    .venv/bin/python -m lib.trainers.segmentation_spleen --output FILE [--holdout example_ct] [--init FILE]
        [--epochs 4 --steps 80 --time-limit-min 45]   (run from apps/spleen; resumes an unfinished run
                                                        from FILE's run folder, FILE without .pt)

`aiaa train segmentation_spleen` and MONAI Label's /train/segmentation_spleen run the same trainer with the
defaults (phantoms only; MONAI Label starts from the served weights, `aiaa train` from scratch). With two
patients, real CT did not generalise (apps/spleen/README.md), so it is not in the defaults.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Events
from monai.inferers import SlidingWindowInferer, sliding_window_inference
from monai.transforms import (
    Compose,
    LabelFilterd,
    RandCropByPosNegLabeld,
    RandGaussianNoised,
    SpatialPadd,
)
from monailabel.tasks.train.basic_train import Context

from aiaa_core.mask_geometry import dice
from aiaa_core.transforms import LoadImageOrTensord
from lib.infers.segmentation_spleen import ROI_SIZE, TARGET_SPACING, ct_window, working_grid
from lib.networks import segmentation_network

from .augment import RandHUShiftScaled, RandThickSlicesd
from .data import SHARED_DATA, VALIDATION_SEED_OFFSET, msd_items, phantom_items, real_items
from .task import REPORT_KEYS, AppTrainTask, run_folder

PATCH = (64, 64, 64)
SPLEEN = 1  # spleen label value in the phantoms, in MSD Task09 and in TotalSegmentator's masks
REAL_SHARE = 0.25  # of the samples drawn, about this many come from the real CTs


def scan_name(image_name: str) -> str:
    """example_ct, example_ct_dicom: the names `holdout` takes."""
    return Path(image_name).name.removesuffix(".nii.gz")


class SegmentationSpleenTrainer(AppTrainTask):
    """Whole-volume spleen segmentation on the inference grid, 3 mm crops, real-CT augmentations.

    `data_dir` (an MSD Task09 folder) replaces the phantoms; `shared_data` adds its real CTs (about
    `REAL_SHARE` of the draws), minus the `holdout` scans, whose Dice is printed each epoch (information
    only: the best epoch is chosen on the validation set). Request keys beyond MONAI Label's: see `defaults`.
    """

    defaults = {
        "num_train_phantoms": 32,
        "num_val_phantoms": 6,
        "crop_size": PATCH[0],  # training crops (cubes, voxels of 3 mm); multiples of 8 for the UNet
        "hu_shift": 30.0,  # HU shift augmentation, ± (scale ±15 % at 80)
        "dose_range": [0.7, 1.6],  # phantom contrast doses (1.0: seeded maximum)
        "unenhanced_share": 0.0,  # phantoms without contrast
    }

    def __init__(
        self,
        model_dir: str,
        *,
        data_dir: Path | None = None,
        shared_data: Path | None = None,
        holdout: tuple[str, ...] = (),
        **kwargs,
    ):
        self.data_dir, self.shared_data, self.holdout = data_dir, shared_data, tuple(holdout)
        self.held_out: list[tuple[str, dict]] = []
        description = "Fine-tune spleen segmentation on the datastore's labels and synthetic phantoms"
        super().__init__(model_dir, segmentation_network, description, labels={"spleen": SPLEEN}, **kwargs)

    def training_data(self, request: dict, labelled: list[dict], rng: np.random.Generator) -> tuple[list, list]:
        seed = int(request["seed"])
        if self.data_dir is None:
            contrast = {
                "varied_contrast": True,
                "dose_range": tuple(float(d) for d in request["dose_range"]),
                "unenhanced_share": float(request["unenhanced_share"]),
            }
            train_items = phantom_items(range(seed, seed + int(request["num_train_phantoms"])), rng, **contrast)
            first_val = VALIDATION_SEED_OFFSET + seed
            val_seeds = range(first_val, first_val + int(request["num_val_phantoms"]))
            val_items = phantom_items(val_seeds, rng, **contrast)
        else:
            items = msd_items(Path(self.data_dir))
            split = max(1, len(items) // 5)
            train_items, val_items = items[split:], items[:split]
        real, self.held_out = [], []
        for image_name, item in real_items(self.shared_data):
            name = scan_name(image_name)
            (self.held_out if name in self.holdout else real).append((name, item))
        if real:
            repeat = max(1, round(REAL_SHARE * len(train_items) / ((1 - REAL_SHARE) * len(real))))
            train_items = train_items + [item for _, item in real] * repeat
        return labelled + train_items, val_items

    def grid(self) -> list:
        return [
            LoadImageOrTensord(keys=("image", "label")),
            *working_grid(keys=("image", "label"), modes=("bilinear", "nearest")),
            LabelFilterd(keys="label", applied_labels=[SPLEEN]),
        ]

    def train_pre_transforms(self, context: Context):
        patch = (int(context.request["crop_size"]),) * 3
        hu_shift = float(context.request["hu_shift"])
        return [
            *self.grid(),
            RandHUShiftScaled(keys="image", shift=hu_shift, scale=0.15 * hu_shift / 80.0, prob=0.8),
            *ct_window(),
            SpatialPadd(keys=("image", "label"), spatial_size=patch),
            RandCropByPosNegLabeld(
                keys=("image", "label"), label_key="label", spatial_size=patch, pos=2, neg=1, num_samples=2
            ),
            RandThickSlicesd(keys="image", spacing=TARGET_SPACING[2], thickness=(3.0, 8.0), prob=0.5),
            RandGaussianNoised(keys="image", prob=0.3, std=0.04),
        ]

    def val_pre_transforms(self, context: Context):
        return [*self.grid(), *ct_window()]

    def val_inferer(self, context: Context):
        return SlidingWindowInferer(roi_size=ROI_SIZE, sw_batch_size=1, overlap=0.25)

    def train_handlers(self, context: Context):
        handlers = super().train_handlers(context)
        if self.held_out:
            handlers.append(HeldOutDice(self.held_out, Compose(self.val_pre_transforms(context)), context))
        return handlers


class HeldOutDice:
    """Prints the Dice of the held-out real scans after each epoch (not used to choose the weights)."""

    def __init__(self, held_out: list[tuple[str, dict]], transforms, context: Context):
        self.items = [(name, transforms(item)) for name, item in held_out]
        self.context = context

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine) -> None:
        network, device = self.context.network, self.context.device
        network.eval()
        scores = []
        with torch.no_grad():
            for name, item in self.items:
                logits = sliding_window_inference(item["image"][None].to(device), ROI_SIZE, 1, network, overlap=0.25)
                pred = logits.argmax(1).cpu() > 0
                truth = torch.as_tensor(item["label"][0]) > 0
                scores.append(f"{name} {dice(pred[0].numpy(), truth.numpy()):.3f}")
        print(f"  held-out real CT Dice (working grid, not used for selection): {', '.join(scores)}", flush=True)


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
    trainer = SegmentationSpleenTrainer(
        run_folder(args.output),
        load_path=str(args.init) if args.init else None,
        publish_path=str(args.output),
        shared_data=None if args.shared_data == "none" else Path(args.shared_data),
        holdout=tuple(h for h in args.holdout.split(",") if h),
    )
    request = {
        "max_epochs": args.epochs,
        "steps_per_epoch": args.steps,
        "seed": args.seed,
        "num_val_phantoms": args.num_val,
        "pretrained": args.init is not None,
        "learning_rate": args.lr,
        "hu_shift": args.hu_shift,
        "dose_range": [float(d) for d in args.doses.split(",")],
        "unenhanced_share": args.unenhanced_share,
        "time_limit_s": args.time_limit_min * 60 if args.time_limit_min else 0,
    }
    report = trainer(request)
    print({k: v for k, v in report.items() if k in REPORT_KEYS})


if __name__ == "__main__":
    sys.exit(main())
