"""The Slicer-free core of the AIAA extension: client, geometry, NIfTI, points, labels, sessions.

Only numpy and requests are imported, so all of it runs and is tested outside Slicer.
"""

from .client import Client, ModelInfo, Result
from .errors import (
    AIAAError,
    BadInput,
    GeometryMismatch,
    ModelNotFound,
    ServerBusy,
    ServerUnreachable,
    SessionExpired,
)
from .geometry import ijk_to_world, is_sheared, matrix_in_frame, nearest_voxel, world_matrix, world_to_ijk
from .labels import compact_labels, label_names, segments_in_mask
from .nifti import read_nifti, write_nifti
from .points import MIN_EXTREME_POINTS, validate_clicks, validate_extreme_points
from .preferences import Preferences, normalise_url, remember_url
from .sessions import SessionCache
from .tasks import BackgroundTask, Cancelled
from .volume import Volume, check_mask_geometry, refuse_sheared

__all__ = [
    "AIAAError", "BackgroundTask", "BadInput", "Cancelled", "Client", "GeometryMismatch", "MIN_EXTREME_POINTS",
    "ModelInfo", "ModelNotFound", "Preferences", "Result", "ServerBusy", "ServerUnreachable", "SessionCache",
    "SessionExpired", "Volume", "check_mask_geometry", "compact_labels", "ijk_to_world", "is_sheared", "label_names",
    "matrix_in_frame", "nearest_voxel", "normalise_url", "read_nifti", "refuse_sheared", "remember_url",
    "segments_in_mask", "validate_clicks", "validate_extreme_points", "world_matrix", "world_to_ijk", "write_nifti",
]
