"""The volume as sent to the server: voxels, world placement, fingerprint, and the mask check on return."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .errors import BadInput, GeometryMismatch
from .geometry import affines_match, is_sheared, world_matrix
from .nifti import write_nifti


@dataclass(frozen=True, eq=False)
class Volume:
    """Voxels in [i, j, k] order, the volume's own IJK→RAS, and the matrix of its parent transforms.

    The server gets the own IJK→RAS (the scanner's patient orientation, which the models expect, and
    which does not change while a registration transform is edited, so the session stays valid).
    Clicks are in world coordinates, so they are mapped through `ijk_to_world`, parents included:
    the voxel indices are the same in both frames. `source` names the volume it was exported from
    (a Slicer node id): a newer export of the same source supersedes the older one's server session.
    """

    voxels: np.ndarray
    ijk_to_ras: np.ndarray
    parent_to_world: np.ndarray | None = None
    source: str | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.voxels.shape)

    @property
    def ijk_to_world(self) -> np.ndarray:
        return world_matrix(self.ijk_to_ras, self.parent_to_world)

    @cached_property
    def fingerprint(self) -> str:
        """Hash of what the server holds (voxels and sent geometry): same fingerprint, no new upload."""
        digest = hashlib.blake2b(digest_size=20)
        digest.update(repr((self.shape, self.voxels.dtype.str)).encode())
        digest.update(np.round(np.asarray(self.ijk_to_ras, dtype=float), 4).tobytes())
        digest.update(np.asfortranarray(self.voxels).T.data)  # C-contiguous view of [k, j, i]: no copy
        return digest.hexdigest()

    def to_nifti(self, compress: bool = True) -> bytes:
        return write_nifti(self.voxels, self.ijk_to_ras, compress=compress)


def refuse_sheared(ijk_to_ras: np.ndarray, name: str = "The volume") -> None:
    """Refuse, before anything is sent, a grid the server would read back on other axes."""
    if is_sheared(ijk_to_ras):
        raise BadInput(
            f"{name} has a sheared voxel grid (its axes are not at right angles: a tilted-gantry CT, or a "
            "shear transform that was hardened), which AIAA servers cannot hold; nothing was sent. Resample "
            "it onto a regular grid first (e.g. Resample Scalar/Vector/DWI Volume, or Crop Volume with "
            "interpolation) and use the resampled volume."
        )


def check_mask_geometry(mask: np.ndarray, mask_affine: np.ndarray, volume: Volume) -> None:
    """Refuse a mask that does not lie voxel for voxel on the grid that was sent."""
    if tuple(mask.shape) != volume.shape:
        raise GeometryMismatch(
            f"The server returned a mask of {mask.shape} voxels for a volume of {volume.shape}; "
            "it was not applied. The server may have resampled the image: ask its administrator."
        )
    if not affines_match(mask_affine, volume.ijk_to_ras):
        raise GeometryMismatch(
            "The server returned a mask that is shifted or rotated against the volume; it was not "
            "applied. The server may have lost the image orientation: ask its administrator."
        )
