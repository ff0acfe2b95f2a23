"""Extreme points (DExtr3D style): six or more boundary points → a binary mask of the object inside."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monailabel.interfaces.tasks.infer_v2 import InferType

from aiaa_core.phantoms import LABELS
from aiaa_core.transforms import bare

from .interactive import InteractiveTask

# Thresholds (logit margins) tried, in order, until the mask reaches every face of the points' box.
BOX_FIT_MARGINS = (0.0, -0.5, -1.0, -1.5, -2.0)
OUTSIDE_SCORE = -8.0  # the score given outside the points' box (well below any threshold)


class ExtremePoints(InteractiveTask):
    """Crop = bounding box of the points plus `padding_mm` (AIAA's `padding`), resampled to `roi`.

    The points bound the object, so the mask is fitted to their box (`fit_to_box`): nothing outside it
    (one crop voxel of tolerance), and the threshold lowered step by step until the mask reaches each of
    the box's six faces, as the object does by definition of its extreme points.
    """

    task_type = InferType.ANNOTATION
    summary = "Extreme points: click 6 boundary points of an object"
    box_points = ("points",)
    points_keys = ("points",)
    crop_size = (80, 80, 80)
    padding_mm = 20.0
    sigma = 3.0
    pad_beyond_image = True
    max_zoom_outs = 0  # the points bound the object: a prediction at the crop's border is a leak

    def __init__(self, path, network, **kwargs):
        super().__init__(path, network, **kwargs)
        # Class-agnostic, so listed under the structures it was trained on: AIAA clients that filter models
        # by label (MITK) then find it for each of them. Its mask stays binary: 1 = the object pointed at.
        self.labels = list(LABELS)

    @property
    def model_info(self) -> dict:
        return {"padding": self.padding_mm, "roi": list(self.crop_size), "sigma": self.sigma}

    def run_inferer(self, data, convert_to_batch=True, device="cuda"):
        data = super().run_inferer(data, convert_to_batch, device)
        points = np.asarray(data.get("points") or [], dtype=int).reshape(-1, 3)  # in the crop, after the crop
        if len(points) >= 2:
            data[self.output_label_key] = fit_to_box(bare(data[self.output_label_key]).float(), points)
        return data


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
