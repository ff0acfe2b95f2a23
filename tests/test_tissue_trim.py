"""The click masks' tissue trim (`aiaa_core.tissue_trim`): a spill into fat and lung beside a homogeneous organ
is dropped, a gas pocket inside a hollow organ stays, a textured core or a gas core leaves the mask as it is,
and the transform only lowers the dropped voxels' scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT
from scipy import ndimage

from aiaa_core.tissue_trim import DROPPED_SCORE, TrimToTissued, tissue_part, trim_to_tissue
from aiaa_core.transforms import __all__ as core_transforms
from server.registry import load_app_models

WINDOW = (-400.0, 600.0)
SHAPE = (48, 48, 48)


def ball(centre, radius) -> np.ndarray:
    grid = np.indices(SHAPE).astype(float)
    return sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True)) <= radius**2


def ct(organ: np.ndarray, organ_hu: float = 50.0, noise: float = 8.0) -> np.ndarray:
    """Fat (−100 HU) with lung (−800 HU) above k = 34, and `organ` at `organ_hu`; CT noise."""
    hu = np.full(SHAPE, -100.0, dtype=np.float32)
    hu[:, :, 34:] = -800.0
    hu[organ] = organ_hu
    return hu + np.random.default_rng(0).normal(0.0, noise, SHAPE).astype(np.float32)


def beyond_partial_volume(spill: np.ndarray, organ: np.ndarray) -> np.ndarray:
    """The spill's voxels more than one voxel from the organ (the one next to it is given back)."""
    return spill & ~ndimage.binary_dilation(organ, np.ones((3, 3, 3)))


def test_a_spill_into_fat_and_lung_is_dropped():
    organ = ball((24, 24, 22), 11)
    hu = ct(organ)
    spill = ball((24, 24, 34), 9) & ~organ  # the network's mask runs on into the fat and the lung base
    kept = tissue_part(organ | spill, hu)
    assert kept is not None
    far = beyond_partial_volume(spill, organ)
    assert far.sum() > 0.6 * spill.sum()
    assert (kept & far).sum() <= 0.02 * far.sum()
    assert (kept & organ).sum() >= 0.99 * organ.sum()


def test_a_gas_pocket_inside_a_hollow_organ_stays():
    organ = np.zeros(SHAPE, dtype=bool)
    organ[8:40, 8:40, 8:40] = True
    hu = ct(organ, organ_hu=40.0)
    pocket = np.zeros(SHAPE, dtype=bool)
    pocket[30:36, 12:18, 12:30] = True  # gas off the core
    hu[pocket] = -900.0
    logits = torch.from_numpy(np.where(organ, 3.0, -3.0).astype(np.float32))[None]
    assert torch.equal(trim_to_tissue(logits, hu), logits)  # the pocket was dropped, then filled back


@pytest.mark.parametrize("case", ["textured core", "gas lumen"])
def test_the_mask_is_left_as_it_is_when_its_core_is_not_its_tissue(case):
    organ = ball((24, 24, 22), 12)
    hu = ct(organ, organ_hu=40.0)
    if case == "textured core":  # 4-voxel blocks of ±80 HU: coarser than the core's smoothing
        blocks = np.random.default_rng(1).normal(0.0, 80.0, [n // 4 for n in SHAPE]).astype(np.float32)
        hu[organ] += np.kron(blocks, np.ones((4, 4, 4), dtype=np.float32))[organ]
    else:  # gas in a walled organ: the core is the lumen
        hu[ball((24, 24, 22), 10)] = -900.0
    assert tissue_part(organ, hu) is None
    logits = torch.from_numpy(np.where(organ, 3.0, -3.0).astype(np.float32))[None]
    assert torch.equal(trim_to_tissue(logits, hu), logits)


def test_the_transform_lowers_only_the_dropped_voxels():
    organ = ball((24, 24, 22), 11)
    hu = ct(organ)
    spill = ball((24, 24, 34), 9) & ~organ
    score = np.where(organ | spill, 2.5, -1.0).astype(np.float32)
    pred = torch.stack([torch.zeros(SHAPE), torch.from_numpy(score)])
    image = torch.from_numpy(np.clip((hu - WINDOW[0]) / (WINDOW[1] - WINDOW[0]), 0, 1))[None]
    out = TrimToTissued(keys="pred", image_key="image", window=WINDOW)({"pred": pred, "image": image})["pred"]
    new = (out[1] - out[0]).numpy()
    dropped = (score > 0) & (new <= 0)
    assert dropped.sum() >= 0.9 * beyond_partial_volume(spill, organ).sum() and not (dropped & organ).any()
    assert np.all(new[dropped] == DROPPED_SCORE)
    assert np.array_equal(new[~dropped], score[~dropped])
    assert "TrimToTissued" in core_transforms  # uploaded configs and exports may name it


def test_both_click_models_trim_their_masks():
    """The app's click tasks run the trim (and so do their exports, which list the same post-transforms)."""
    tasks = {m.name: m.task for m in load_app_models(REPO_ROOT / "apps" / "spleen")}
    for name in ("extreme_points", "deepgrow_3d"):
        assert any(isinstance(t, TrimToTissued) for t in tasks[name].post_transforms()), name
    assert not any(isinstance(t, TrimToTissued) for t in tasks["segmentation_spleen"].post_transforms())
