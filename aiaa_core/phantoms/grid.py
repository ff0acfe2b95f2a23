"""Geometry and rendering of the phantoms: frames and shapes in patient space (mm, LPS), and painting the
parts on a voxel grid in bounded chunks.

Names keep their leading underscore: they are the package's internals (the public names are in
`aiaa_core.phantoms`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .labels import ORIENTATIONS

_LPS_AXES = {"L": (1, 0, 0), "R": (-1, 0, 0), "P": (0, 1, 0), "A": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}
_AIR = -1000.0
_FAR = 1e4  # mm: the extent of structures that span the whole field of view
_CHUNK_VOXELS = 1 << 20  # bounds the temporaries of one evaluation step

Array = np.ndarray
Shader = Callable[[Array, Array, Array], tuple[Array, Array | float]]


def _direction(orientation: str, seed: int) -> Array:
    """Direction cosines (columns: LPS direction of each index axis) for a nibabel axis code or "oblique"."""
    if orientation == "oblique":
        rng = np.random.default_rng((seed, 1))  # its own stream: the anatomy must not depend on orientation
        axis = rng.choice((-1.0, 1.0), 3) * rng.uniform(0.4, 1.0, 3)  # tilted: no component near zero
        return _rotation(axis, math.radians(rng.uniform(15.0, 25.0))) @ np.diag([-1.0, -1.0, 1.0])
    code = orientation.upper() if isinstance(orientation, str) else ""
    pairs = [{"L", "R"}, {"P", "A"}, {"S", "I"}]
    if len(code) != 3 or any(sum(c in pair for c in code) != 1 for pair in pairs):
        raise ValueError(f"orientation must be one of {', '.join(ORIENTATIONS)} or an axis code, got {orientation!r}")
    return np.array([_LPS_AXES[c] for c in code], dtype=float).T


def _rotation(axis: Sequence[float], angle: float) -> Array:
    """Proper rotation (det +1) by `angle` radians about `axis` (Rodrigues)."""
    k = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    cross = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + math.sin(angle) * cross + (1.0 - math.cos(angle)) * cross @ cross


def _frame(u: Sequence[float], v_hint: Sequence[float]) -> Array:
    """Rows u, v, w of a right-handed orthonormal frame: u as given, v the part of `v_hint` orthogonal to u."""
    u = np.asarray(u, dtype=float) / np.linalg.norm(u)
    v = np.asarray(v_hint, dtype=float)
    v = v - (v @ u) * u
    v /= np.linalg.norm(v)
    return np.array([u, v, np.cross(u, v)])


def _random_frame(rng: np.random.Generator) -> Array:
    """A uniformly oriented frame, for shapes with no anatomical axis (bowel loops)."""
    return _frame(rng.normal(size=3), rng.normal(size=3))


def _local(x: Array, y: Array, z: Array, centre: Array, frame: Array) -> list[Array]:
    """Coordinates of the points along the rows of `frame`, relative to `centre`."""
    dx, dy, dz = x - centre[0], y - centre[1], z - centre[2]
    return [r[0] * dx + r[1] * dy + r[2] * dz for r in frame]


def _extent(frame: Array, semi: Sequence[float]) -> Array:
    """Half-size along x, y, z of the box around an ellipsoid with axes `frame` rows and semi-axes `semi`."""
    return np.sqrt(((frame * np.asarray(semi, dtype=float)[:, None]) ** 2).sum(axis=0))


def _tube_ratio(x: Array, y: Array, z: Array, points: Array, radii: Sequence[float]) -> Array:
    """Distance to a polyline over its (linearly varying) radius: below 1 inside the tube."""
    best = None
    for p, q, rp, rq in zip(points[:-1], points[1:], radii[:-1], radii[1:], strict=True):
        d = q - p
        t = ((x - p[0]) * d[0] + (y - p[1]) * d[1] + (z - p[2]) * d[2]) / float(d @ d)
        np.clip(t, 0.0, 1.0, out=t)
        ex, ey, ez = x - p[0] - t * d[0], y - p[1] - t * d[1], z - p[2] - t * d[2]
        ratio = np.sqrt(ex * ex + ey * ey + ez * ez) / (rp + t * (rq - rp))
        best = ratio if best is None else np.minimum(best, ratio)
    return best


def _scatter(n: int, where: Array, inside: Array) -> Array:
    """Full-length mask of `n` points that is True at the `where` indices selected by `inside`."""
    mask = np.zeros(n, dtype=bool)
    mask[where[inside]] = True
    return mask


@dataclass(frozen=True)
class _Part:
    """One painted structure: its label (0 for unlabelled tissue), patient-space box, and shader.

    The shader takes the flat x, y, z (mm) of the points in the box and returns which are inside and their HU
    (a scalar or one value per inside point)."""

    label: int
    lo: Array
    hi: Array
    shade: Shader


def _chunk_slices(shape: tuple[int, int, int]) -> int:
    return max(1, _CHUNK_VOXELS // (shape[0] * shape[1]))


def _index_box(part: _Part, inverse: Array, centre: Array, shape: tuple[int, ...]) -> list[tuple[int, int]] | None:
    """Index ranges (half open) of the voxels that can fall in the part's box, or None when it misses the grid."""
    corners = np.array(np.meshgrid(*zip(part.lo, part.hi, strict=True), indexing="ij")).reshape(3, -1)
    index = inverse @ corners + centre[:, None]
    lo = np.clip(np.floor(index.min(axis=1)).astype(int), 0, shape)
    hi = np.clip(np.ceil(index.max(axis=1)).astype(int) + 1, 0, shape)
    return None if np.any(hi <= lo) else list(zip(lo.tolist(), hi.tolist(), strict=True))


def _render(parts: list[_Part], shape: tuple[int, int, int], matrix: Array) -> tuple[Array, Array]:
    """HU (float32) and label (uint8) arrays in numpy (k, j, i) order, painted part after part in k slabs."""
    ni, nj, nk = shape
    centre = (np.array(shape) - 1) / 2.0
    hu = np.full((nk, nj, ni), _AIR, dtype=np.float32)
    label = np.zeros((nk, nj, ni), dtype=np.uint8)
    boxes = [_index_box(p, np.linalg.inv(matrix), centre, shape) for p in parts]
    step = _chunk_slices(shape)
    for k0 in range(0, nk, step):
        for part, box in zip(parts, boxes, strict=True):
            if box is None:
                continue
            (i0, i1), (j0, j1), (b0, b1) = box
            a, b = max(k0, b0), min(k0 + step, b1)
            if a >= b:
                continue
            idx = [np.arange(lo, hi, dtype=np.float32) - np.float32(c)
                   for (lo, hi), c in zip(((i0, i1), (j0, j1), (a, b)), centre, strict=True)]
            i, j, k = idx[0][None, None, :], idx[1][None, :, None], idx[2][:, None, None]
            x, y, z = (np.float32(m[0]) * i + np.float32(m[1]) * j + np.float32(m[2]) * k for m in matrix)
            mask, value = part.shade(x.ravel(), y.ravel(), z.ravel())
            mask = mask.reshape(b - a, j1 - j0, i1 - i0)
            label[a:b, j0:j1, i0:i1][mask] = part.label
            hu[a:b, j0:j1, i0:i1][mask] = value
    return hu, label




def _box(lo: Sequence[float], hi: Sequence[float]) -> tuple[Array, Array]:
    return np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)
