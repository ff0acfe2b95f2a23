"""Point lists from `params`: `[i, j, k]` voxel indices of the uploaded file, validated against its size.

Clients send lists or JSON-encoded strings (older clients double-encode), floats or ints. A point up to
one voxel outside the image is clamped onto its border (the Python client's own crop puts far-edge
points at index = size); further outside is a 400.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from .errors import BadRequest


def parse_points(params: dict, key: str, size: Sequence[int], *, min_count: int = 0) -> list[list[int]]:
    """`params[key]` as a list of in-image [i, j, k] integer points (at least `min_count`)."""
    value = params.get(key, [])
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except json.JSONDecodeError:
            raise BadRequest(f"'{key}' is not a valid point list; send [[x, y, z], ...].") from None
    try:
        points = np.asarray(value if value is not None else [], dtype=float).reshape(-1, 3)
    except (TypeError, ValueError):
        raise BadRequest(f"'{key}' must be a list of [x, y, z] points, e.g. [[10, 20, 30]].") from None
    if not np.isfinite(points).all():
        raise BadRequest(f"'{key}' contains a point that is not a number.")
    if len(points) < min_count:
        raise BadRequest(f"'{key}' needs at least {min_count} points; got {len(points)}.")
    points = np.rint(points).astype(int)
    upper = np.asarray(size, dtype=int) - 1
    outside = ((points < -1) | (points > upper + 1)).any(axis=1)
    if outside.any():
        first = points[outside][0].tolist()
        raise BadRequest(
            f"Point {first} in '{key}' is outside the image (valid voxel indices are 0..{upper.tolist()})."
        )
    return np.clip(points, 0, upper).tolist()
