"""2D masks as PNG files: what the AIAA C++ client (MITK) saves a 2D fix-polygon result as.

`imageio.encode_mask` writes formats that keep 3D geometry; a PNG keeps only the size (and the spacing,
as ITK's pixels-per-metre chunk), which is all a 2D slice client reads back.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import BadRequest

PNG_EXTENSION = ".png"
PNG_DTYPES = ("uint8", "uint16")
"""Grey-level sample types a PNG stores (ITK's PNG writer takes these and no others)."""


def encode_png_mask(mask_ij: np.ndarray, reference: sitk.Image, dtype: str = "uint8") -> bytes:
    """PNG bytes of a 2D `[i, j]` mask the size of the 2D `reference` (i = PNG column, j = PNG row).

    `dtype` comes from the client (`result_dtype`), so anything but uint8/uint16 is a `BadRequest`;
    a shape that differs from the reference is a server bug (`ValueError`).
    """
    if dtype not in PNG_DTYPES:
        raise BadRequest(f"Unsupported mask data type '{dtype}' for a PNG mask. Use uint8 or uint16.")
    mask = np.asarray(mask_ij)
    if reference.GetDimension() != 2 or mask.shape != tuple(reference.GetSize()):
        raise ValueError(f"a PNG mask needs a 2D mask the reference's size; got {mask.shape} for {reference.GetSize()}")
    limits = np.iinfo(dtype)
    if mask.size and (mask.min() < limits.min or mask.max() > limits.max):
        raise BadRequest(f"The mask has label values from {mask.min()} to {mask.max()}, which do not fit in {dtype}.")
    image = sitk.GetImageFromArray(np.ascontiguousarray(mask.T.astype(dtype, copy=False)))
    image.SetSpacing(reference.GetSpacing())
    with tempfile.TemporaryDirectory(prefix="aiaa-png-") as tmp:
        path = Path(tmp) / "mask.png"
        writer = sitk.ImageFileWriter()
        writer.SetImageIO("PNGImageIO")
        writer.SetFileName(str(path))
        writer.Execute(image)
        return path.read_bytes()
