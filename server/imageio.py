"""Moved: this module was split by job (issue 14); import from the new homes, this name goes away.

`server.image_names` (upload names), `server.image_headers` (header checks, `ImageHeader`),
`server.image_reading` (`read_image`, `require_3d`), `server.dicom_reading`, `server.mask_writing`
(`encode_mask`, also PNG) and `aiaa_core.volumes` (`to_array`, `ras_affine`, `to_metatensor`).
"""

from aiaa_core.volumes import ras_affine, to_array, to_metatensor

from .image_headers import ImageHeader
from .image_names import image_extension, upload_basename
from .image_reading import read_image, require_3d
from .mask_writing import MASK_EXTENSIONS, _geometry, _nifti_header, _write, encode_mask

__all__ = [
    "MASK_EXTENSIONS",
    "ImageHeader",
    "_geometry",
    "_nifti_header",
    "_write",
    "encode_mask",
    "image_extension",
    "ras_affine",
    "read_image",
    "require_3d",
    "to_array",
    "to_metatensor",
    "upload_basename",
]
