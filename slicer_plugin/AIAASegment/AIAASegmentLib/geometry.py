"""World (RAS) ↔ voxel (IJK) conversion through a volume's FULL world transform.

Slicer gives a volume's own IJK→RAS matrix and, separately, the matrix of its parent transforms to
world. Clicks arrive in world coordinates, so the IJK of a click is `inv(parent @ ijk_to_ras)` applied
to it; using `ijk_to_ras` alone puts clicks on the wrong voxels whenever the volume sits under a
transform. All matrices are 4×4 homogeneous numpy arrays.
"""

from __future__ import annotations

import numpy as np


def world_matrix(ijk_to_ras: np.ndarray, parent_to_world: np.ndarray | None = None) -> np.ndarray:
    """IJK → world: the volume's own IJK→RAS composed with its parent transforms (identity if none)."""
    own = _matrix(ijk_to_ras)
    return own if parent_to_world is None else _matrix(parent_to_world) @ own


def world_to_ijk(points: np.ndarray | list, ijk_to_world: np.ndarray) -> np.ndarray:
    """Continuous IJK coordinates (N×3 float) of world points (N×3)."""
    return _apply(np.linalg.inv(_matrix(ijk_to_world)), points)


def ijk_to_world(points: np.ndarray | list, ijk_to_world_matrix: np.ndarray) -> np.ndarray:
    """World coordinates (N×3 float) of IJK points (N×3); voxel centres for integer indices."""
    return _apply(_matrix(ijk_to_world_matrix), points)


def nearest_voxel(ijk: np.ndarray | list) -> np.ndarray:
    """The voxel (integer IJK) whose centre is nearest; halves round up, so each voxel owns [-0.5, 0.5)."""
    return np.floor(np.asarray(ijk, dtype=float) + 0.5).astype(int)


def matrix_in_frame(ijk_to_world_matrix: np.ndarray, frame_to_world: np.ndarray | None) -> np.ndarray:
    """IJK → the coordinates of another node's parent frame (e.g. a segmentation under a transform)."""
    full = _matrix(ijk_to_world_matrix)
    return full if frame_to_world is None else np.linalg.inv(_matrix(frame_to_world)) @ full


def affines_match(a: np.ndarray, b: np.ndarray, tolerance_mm: float = 1e-3) -> bool:
    """Same grid placement within `tolerance_mm` (files store geometry as float32)."""
    return bool(np.allclose(_matrix(a), _matrix(b), rtol=1e-5, atol=tolerance_mm))


def nearest_rotation(direction: np.ndarray) -> np.ndarray:
    """The orthonormal 3×3 matrix nearest to `direction` (unit columns that may carry float noise)."""
    u, _, vt = np.linalg.svd(np.asarray(direction, dtype=float))
    return u @ vt


def is_sheared(ijk_to_ras: np.ndarray) -> bool:
    """True when the voxel axes are not at right angles (a tilted gantry, a hardened shear transform).

    A NIfTI qform, and the image readers of AIAA servers, hold only right-angled grids: such a volume
    comes back on another grid. Float noise within the mask check's tolerance is not a shear.
    """
    m = _matrix(ijk_to_ras)
    spacing = np.linalg.norm(m[:3, :3], axis=0)
    if np.any(spacing == 0):
        return False  # degenerate, not sheared: the NIfTI writer says so
    right_angled = m.copy()
    right_angled[:3, :3] = nearest_rotation(m[:3, :3] / spacing) * spacing
    return not affines_match(right_angled, m)


def _matrix(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=float)
    if m.shape != (4, 4):
        raise ValueError(f"expected a 4x4 matrix, got shape {m.shape}")
    return m


def _apply(matrix: np.ndarray, points: np.ndarray | list) -> np.ndarray:
    p = np.asarray(points, dtype=float).reshape(-1, 3)
    return p @ matrix[:3, :3].T + matrix[:3, 3]
