"""segmentation_spleen's training pieces: the real-CT augmentations and a training run that resumes."""

from __future__ import annotations

import numpy as np
import torch

from lib.trainers.augment import RandHUShiftScaled, RandThickSlicesd, thick_slices
from lib.trainers.loop import fit


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


def test_training_resumes_from_its_checkpoint(tmp_path):
    """A sitting ends at its time limit; the next one continues at the next epoch, history kept."""
    torch.manual_seed(0)
    inputs, targets = torch.rand(1, 1, 8, 8, 8), (torch.rand(1, 1, 8, 8, 8) > 0.5).float()
    scores = iter([0.1, 0.2, 0.3])

    def run(time_limit_s):
        network = torch.nn.Conv3d(1, 2, 3, padding=1)
        return fit(
            network,
            lambda _n: (inputs, targets),
            lambda _n: next(scores),
            tmp_path / "w.pt",
            epochs=3,
            steps_per_epoch=2,
            checkpoint=tmp_path / "w.ckpt",
            time_limit_s=time_limit_s,
        )

    first = run(time_limit_s=0.0)
    assert not first["finished"] and [h["epoch"] for h in first["history"]] == [1]
    second = run(time_limit_s=None)
    assert second["finished"] and [h["epoch"] for h in second["history"]] == [1, 2, 3]
    assert second["best_val_dice"] == 0.3
    saved = torch.load(tmp_path / "w.ckpt", weights_only=False)
    assert saved["epoch"] == 3 and saved["scheduler"]["last_epoch"] == 6
