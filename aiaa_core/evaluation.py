"""How accuracy is measured: Dice, extreme points of a mask, and a simulated clinician's clicks.

Used by the accuracy tests (through a live server), the app's trainers and the benches (`bench/accuracy.py`,
the app README's table); in the core so that none of them reaches into another's package for it.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

# Re-exported: scored by the same rules inference applies (one implementation, in the core's mask geometry).
from .mask_geometry import dice, extreme_points, largest_component

__all__ = ["centre_click", "dice", "extreme_points", "largest_component", "next_click"]


def centre_click(region: np.ndarray, spacing=None) -> list[int]:
    """The voxel deepest inside the largest connected part of `region` (where a clinician clicks).

    Depth is in millimetres when `spacing` is given, and the volume's edge counts as the region's
    boundary (a region cut by the scan is clicked inside what is visible, not on the cut face).
    """
    region = np.pad(largest_component(np.asarray(region) > 0), 1)
    depth = ndimage.distance_transform_edt(region, sampling=spacing)[1:-1, 1:-1, 1:-1]
    if depth.max() == 0:
        raise ValueError("empty region")
    return [int(v) for v in np.unravel_index(np.argmax(depth), depth.shape)]


def next_click(prediction: np.ndarray, truth: np.ndarray, spacing=None) -> tuple[str, list[int]]:
    """('foreground'|'background', point) at the centre of the largest missed or extra region."""
    prediction, truth = np.asarray(prediction) > 0, np.asarray(truth) > 0
    regions = {
        "foreground": largest_component(truth & ~prediction),
        "background": largest_component(prediction & ~truth),
    }
    kind = max(regions, key=lambda k: regions[k].sum())
    return kind, centre_click(regions[kind], spacing)
