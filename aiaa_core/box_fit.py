"""Extreme points bound their object: fit the predicted mask to the points' box (a post-transform the app's
extreme-points task and its exported MMAR/bundle share, `aiaa.transforms.FitToPointsBoxd`)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.transforms import MapTransform

from .keys import data_key
from .tensors import bare

# Thresholds (logit margins) tried, in order, until the mask reaches every face of the points' box.
BOX_FIT_MARGINS = (0.0, -0.5, -1.0, -1.5, -2.0)
OUTSIDE_SCORE = -8.0  # the score given outside the points' box (well below any threshold)


class FitToPointsBoxd(MapTransform):
    """Nothing outside the box of the points (in the crop's voxels, one voxel of tolerance), and the
    threshold lowered step by step until the mask reaches each of the box's six faces (`fit_to_box`)."""

    def __init__(self, keys="pred", points_key: str = "points"):
        super().__init__(keys)
        self.points_key = data_key(points_key, "points_key")

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        points = np.asarray(d.get(self.points_key) or [], dtype=int).reshape(-1, 3)
        if len(points) < 2:
            return d
        for key in self.key_iterator(d):
            d[key] = fit_to_box(bare(d[key]).float(), points)
        return d


def fit_to_box(logits: torch.Tensor, points: np.ndarray, margins: Sequence[float] = BOX_FIT_MARGINS) -> torch.Tensor:
    """Two-channel logits whose score (object − background) is the network's, shifted by the first margin
    of `margins` at which the mask reaches all six faces of the points' box (within one voxel), and
    `OUTSIDE_SCORE` beyond the box widened by one voxel."""
    score = logits[1] - logits[0] if logits.shape[0] == 2 else logits[0]
    shape = np.asarray(score.shape)
    low = np.clip(points.min(0) - 1, 0, shape - 1)
    high = np.clip(points.max(0) + 2, 1, shape)  # exclusive
    box = tuple(slice(int(lo), int(hi)) for lo, hi in zip(low, high, strict=True))
    inside = score[box]
    shift = margins[-1]
    for margin in margins:
        if reaches_every_face(inside > margin):
            shift = margin
            break
    fitted = torch.full_like(score, OUTSIDE_SCORE)
    fitted[box] = inside - shift
    return torch.stack([torch.zeros_like(fitted), fitted])


def reaches_every_face(mask: torch.Tensor, depth: int = 2) -> bool:
    """Does the mask hold a voxel within `depth` voxels of each of its box's six faces?"""
    for axis in range(3):
        n = mask.shape[axis]
        for part in (slice(0, min(depth, n)), slice(max(0, n - depth), n)):
            if not bool(mask[(slice(None),) * axis + (part,)].any()):
                return False
    return True
