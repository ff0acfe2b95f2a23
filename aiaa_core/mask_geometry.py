"""Mask geometry shared by inference, the app's transforms and accuracy scoring: Dice, the largest
connected component and the extreme points of a mask.

One implementation each, so accuracy is scored by the same rules inference applies (numpy and scipy
only: the app and the benches import it without Flask).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

_FULL_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of the foregrounds (> 0) of two masks of any dimension; two empty masks agree (1.0)."""
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(a, b).sum() / total)


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest fully connected (26 in 3D, 8 in 2D) foreground component of a mask, as bool (empty stays empty).

    Inference keeps this component of every segmentation, so the simulated clinician's clicks pick their
    regions by the same rule.
    """
    mask = np.asarray(mask) > 0
    structure = _FULL_CONNECTIVITY if mask.ndim == 3 else np.ones((3,) * mask.ndim, dtype=bool)
    components, count = ndimage.label(mask, structure=structure)
    if count <= 1:
        return mask
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    return components == sizes.argmax()


def occupied_range(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The lowest and highest foreground index along each axis (the bounding box), None when empty.

    Read from the projections on the axes, not from every foreground voxel's index (a 512×512×100 CT).
    """
    foreground = np.asarray(mask) > 0
    axes = range(foreground.ndim)
    occupied = [np.flatnonzero(foreground.any(axis=tuple(a for a in axes if a != axis))) for axis in axes]
    if any(o.size == 0 for o in occupied):
        return None
    return np.array([o[0] for o in occupied]), np.array([o[-1] for o in occupied])


def extreme_points(mask: np.ndarray, central: bool = False) -> list[list[int]]:
    """The 6 extreme points ([i, j, k]) of a mask: lowest and highest voxel along each axis ([] when empty).

    Each comes from its boundary slice: its first foreground voxel in index order, or with `central` the one
    nearest that face's centroid (where a user would click it).
    """
    foreground = np.asarray(mask) > 0
    extent = occupied_range(foreground)
    if extent is None:
        return []
    low, high = extent
    points = []
    for axis in range(foreground.ndim):
        for end in (low[axis], high[axis]):
            inside = np.argwhere(foreground[(slice(None),) * axis + (end,)])  # in index order
            pick = inside[np.argmin(((inside - inside.mean(0)) ** 2).sum(1))] if central else inside[0]
            points.append([int(v) for v in np.insert(pick, axis, end)])
    return points
