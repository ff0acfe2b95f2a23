"""Checks on clicked points before anything is sent, with messages that say what to do."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import BadInput
from .geometry import nearest_voxel

MIN_EXTREME_POINTS = 6


def validate_extreme_points(points_ijk: np.ndarray | list, shape: Sequence[int]) -> list[list[int]]:
    """Integer [i, j, k] of ≥ 6 extreme points, each inside the volume."""
    points = np.asarray(points_ijk, dtype=float).reshape(-1, 3)
    if len(points) < MIN_EXTREME_POINTS:
        missing = MIN_EXTREME_POINTS - len(points)
        raise BadInput(
            f"Place at least {MIN_EXTREME_POINTS} extreme points (you have {len(points)}; {missing} more): "
            "the left-, right-, front-, back-, top- and bottom-most edges of the structure."
        )
    return _inside(points, shape, "Extreme point")


def validate_clicks(
    foreground_ijk: np.ndarray | list, background_ijk: np.ndarray | list, shape: Sequence[int]
) -> tuple[list[list[int]], list[list[int]]]:
    """Integer [i, j, k] of the foreground (≥ 1) and background clicks, each inside the volume."""
    foreground = np.asarray(foreground_ijk, dtype=float).reshape(-1, 3)
    background = np.asarray(background_ijk, dtype=float).reshape(-1, 3)
    if len(foreground) == 0:
        raise BadInput("Click at least once inside the structure (a foreground point) before background points.")
    return _inside(foreground, shape, "Foreground point"), _inside(background, shape, "Background point")


def _inside(points: np.ndarray, shape: Sequence[int], what: str) -> list[list[int]]:
    voxels = nearest_voxel(points)
    for n, voxel in enumerate(voxels, start=1):
        if np.any(voxel < 0) or np.any(voxel >= np.asarray(shape)):
            raise BadInput(
                f"{what} {n} lies outside the selected volume; move it onto the image "
                "(or select the volume you clicked on)."
            )
    return voxels.tolist()
