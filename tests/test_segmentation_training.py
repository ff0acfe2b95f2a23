"""segmentation_spleen's training pieces: the real-CT augmentations and a MONAI Label training run that resumes."""

from __future__ import annotations

import numpy as np
import torch

from lib.networks import segmentation_network
from lib.trainers.augment import RandHUShiftScaled, RandThickSlicesd, thick_slices
from lib.trainers.segmentation_spleen import SegmentationSpleenTrainer
from lib.trainers.task import run_folder


def slab(depth: int = 40) -> torch.Tensor:
    """1×8×8×depth: a 2-voxel bright slab across the volume at mid-depth, a sharp edge at the bottom."""
    volume = torch.zeros(1, 8, 8, depth)
    volume[..., depth // 2 : depth // 2 + 2] = 1.0
    volume[..., : depth // 4] = 1.0
    return volume


def test_thick_slices_blur_only_along_the_slice_axis():
    volume = slab()
    thick = thick_slices(volume, 8.0 / 3.0)
    assert thick.shape == volume.shape
    profile = thick[0, 4, 4]
    assert profile[20:22].max() < 0.8  # a thin structure fades in a thick slice ...
    assert abs(float(profile.sum() - volume[0, 4, 4].sum())) < 1.5  # averaging keeps the mass
    assert (profile[14:28] > 0.05).sum() > 2  # ... and spreads over its neighbours
    np.testing.assert_allclose(thick[0, :, :, 20], thick[0, 0, 0, 20].expand(8, 8))  # in-plane untouched


def test_thick_slices_transform_keeps_the_label():
    data = {"image": slab(), "label": (slab() > 0).float()}
    out = RandThickSlicesd(keys="image", spacing=3.0, thickness=(7.0, 8.0), prob=1.0)(data)
    assert not torch.equal(out["image"], data["image"])
    assert torch.equal(out["label"], data["label"])


def test_hu_shift_and_scale_move_soft_tissue():
    transform = RandHUShiftScaled(keys="image", shift=80.0, scale=0.0, prob=1.0)
    transform.set_random_state(seed=3)
    image = torch.full((1, 4, 4, 4), 40.0)
    shifted = transform({"image": image})["image"]
    assert torch.allclose(shifted, shifted.flatten()[0].expand_as(shifted))
    assert 0 < abs(float(shifted.flatten()[0]) - 40.0) <= 80.0


def tiny_trainer(tmp_path):
    """segmentation_spleen's MONAI Label train task, publishing into `tmp_path` (starts from scratch)."""
    torch.set_num_threads(1)
    return SegmentationSpleenTrainer(run_folder(tmp_path / "seg.pt"), publish_path=str(tmp_path / "seg.pt"))


TINY = {"steps_per_epoch": 1, "num_train_phantoms": 1, "num_val_phantoms": 1, "crop_size": 32, "pretrained": False}


def test_training_resumes_from_its_checkpoint(tmp_path):
    """A sitting ends at its time limit; the next one continues at the next epoch, history and baseline kept."""
    first = tiny_trainer(tmp_path)({**TINY, "max_epochs": 2, "time_limit_s": 1e-6})
    assert not first["finished"] and [h["epoch"] for h in first["history"]] == [1]
    run = tmp_path / "seg" / "train_01"
    assert list(run.glob("resume_*.pt")), "the unfinished run keeps its full state"
    second = tiny_trainer(tmp_path)({**TINY, "max_epochs": 2})
    assert second["finished"] and [h["epoch"] for h in second["history"]] == [1, 2]
    assert second["baseline_val_dice"] == first["baseline_val_dice"]
    assert second["history"][0] == first["history"][0]
    assert second["best_val_dice"] == max(second["baseline_val_dice"], *(h["val_dice"] for h in second["history"]))
    assert not list(run.glob("resume_*.pt")), "a finished run is not resumed by the next one"
    assert (tmp_path / "seg.pt").is_file() and (run / "model.pt").is_file()
    weights = torch.load(tmp_path / "seg.pt", weights_only=True)
    assert set(weights) == set(segmentation_network().state_dict())  # a plain state dict, as served
