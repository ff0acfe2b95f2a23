"""How the app measures its accuracy: Dice, extreme points of a mask, and a simulated clinician's clicks.

Used by the accuracy tests (through a live server) and by `bench/accuracy.py` (the app README's table).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(a, b).sum() / total)


def extreme_points(mask: np.ndarray, central: bool = False) -> list[list[int]]:
    """The 6 extreme points ([i, j, k]) of a mask: lowest and highest voxel along each axis.

    `central`: of the voxels on each extreme face, the one nearest that face's centroid (where a user
    would click it), not the first in index order.
    """
    voxels = np.argwhere(np.asarray(mask) > 0)
    points = []
    for axis in range(voxels.shape[1]):
        for pick in (np.argmin, np.argmax):
            if not central:
                points.append(voxels[pick(voxels[:, axis])].tolist())
                continue
            face = voxels[voxels[:, axis] == voxels[pick(voxels[:, axis]), axis]]
            points.append(face[np.argmin(((face - face.mean(0)) ** 2).sum(1))].tolist())
    return points


def largest_component(region: np.ndarray) -> np.ndarray:
    components, count = ndimage.label(region)
    if count == 0:
        return np.zeros_like(region, dtype=bool)
    return components == np.argmax(np.bincount(components.ravel())[1:]) + 1


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
