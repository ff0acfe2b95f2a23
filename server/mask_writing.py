"""Writing a mask back on exactly the input's grid, in the format the client asked for.

Geometry is sacred: a mask goes back with the input's size, spacing, origin and direction (`CopyInformation`,
or ITK's own NIfTI header for that grid), never recomputed, so the viewer overlays it voxel for voxel.
3D formats (`MASK_EXTENSIONS`) keep the full geometry; a PNG (what the AIAA C++ client, MITK, saves a 2D
fix-polygon result as) keeps only the size and the spacing, which is all a 2D slice client reads back.
A click's mask is mostly zeros, so `.nii.gz` is written by a gzip writer that splices in cached deflated
zero blocks instead of deflating the empty bulk again for every click.
The client's writer options (`result_extension`, `result_dtype`, `result_compress`) are parsed here too,
once for every endpoint (`writer_options`), so the formats offered and the ones written cannot drift.
"""

from __future__ import annotations

import functools
import operator
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import params as checked
from .errors import BadRequest

MASK_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha")
"""Formats a mask can be returned in on any grid: all store the full 3D geometry."""

DEFAULT_EXTENSION = ".nii.gz"
DEFAULT_DTYPE = "uint8"

PNG_EXTENSION = ".png"
PNG_DTYPES = ("uint8", "uint16")
"""Grey-level sample types a PNG stores (ITK's PNG writer takes these and no others)."""


@dataclass(frozen=True)
class WriterOptions:
    """The client's mask writer options, checked. `extension` has its dot and is lower case; it is "" only
    while the image decides (`writer_options(..., png_for_2d=True)`), until `for_image` is called."""

    extension: str = DEFAULT_EXTENSION
    dtype: str = DEFAULT_DTYPE
    compress: bool = True

    def for_image(self, dimension: int) -> WriterOptions:
        """The options for a `dimension`-D image: a PNG for a 2D one unless another format was asked for."""
        if self.extension == PNG_EXTENSION and dimension != 2:
            raise BadRequest(
                "'result_extension' .png holds one 2D slice and this image is 3D; "
                f"choose {', '.join(MASK_EXTENSIONS[:-1])} or {MASK_EXTENSIONS[-1]} (or leave it out)."
            )
        if self.extension == PNG_EXTENSION or (dimension == 2 and not self.extension):
            if self.dtype not in PNG_DTYPES:
                raise BadRequest(
                    f"'result_dtype' must be one of {', '.join(PNG_DTYPES)}; got {checked.describe(self.dtype)}."
                )
            return WriterOptions(PNG_EXTENSION, self.dtype, True)
        return WriterOptions(self.extension or DEFAULT_EXTENSION, self.dtype, self.compress)


def writer_options(params: dict, *, png_for_2d: bool = False) -> WriterOptions:
    """`result_extension`, `result_dtype` and `result_compress` from the request's params, checked before any
    work. The 3D endpoints offer `MASK_EXTENSIONS` (default .nii.gz); with `png_for_2d` (fixpolygon, whose
    image may be a 2D slice) `.png` is offered too and, left out, the format waits for the image's
    dimension (`WriterOptions.for_image`). The dtype is refused here when it cannot be a name (not text);
    whether it suits the format is `encode_mask`'s check, or `for_image`'s for a PNG."""
    raw = checked.text(params, "result_extension", "" if png_for_2d else DEFAULT_EXTENSION)
    extension = raw.strip().lower()
    if raw or not png_for_2d:
        extension = extension if extension.startswith(".") else "." + extension
        if extension not in MASK_EXTENSIONS and not (png_for_2d and extension == PNG_EXTENSION):
            offered = MASK_EXTENSIONS + ((PNG_EXTENSION,) if png_for_2d else ())
            raise BadRequest(
                f"Unsupported mask format {checked.describe(extension)}. Choose one of: {', '.join(offered)}."
            )
    dtype = checked.text(params, "result_dtype", DEFAULT_DTYPE)
    options = WriterOptions(extension, dtype, checked.flag(params, "result_compress", True))
    return options.for_image(2) if extension == PNG_EXTENSION else options  # a PNG's dtype: checked now


def encode_mask(
    mask: np.ndarray,
    reference: sitk.Image,
    extension: str = ".nii.gz",
    dtype: str = "uint8",
    compress: bool = True,
) -> bytes:
    """File bytes of `mask` (`[i, j, k]`, shape == reference size) on exactly the reference's grid.

    The geometry is copied from the input image (`CopyInformation`, or ITK's NIfTI header for that grid),
    never recomputed, so the viewer overlays the mask voxel for voxel. `extension` and `dtype` come from
    the client, so bad values are a `BadRequest`; a wrong shape is a server bug (`ValueError`). `.nii.gz`
    is gzipped at level 1 (fast; level 0, stored, when `compress` is False), without deflating the all-zero
    bulk of a mask again for every click; `.nrrd`/`.mha` use ITK's compression at level 1, or raw
    encoding when `compress` is False. NIfTI stores geometry as float32, so spacing and origin come back
    exactly only when they are float32 numbers (all real scanner values are). A 2D reference may also
    take `.png` (uint8 or uint16 only), which the 3D endpoints never offer (`MASK_EXTENSIONS`).
    """
    ext = extension.lower().strip()
    if not ext.startswith("."):
        ext = "." + ext
    if ext == PNG_EXTENSION and reference.GetDimension() == 2:
        return _encode_png(mask, reference, dtype)
    if ext not in MASK_EXTENSIONS:
        raise BadRequest(
            f"Unsupported mask format '{extension}'. Choose one of: {', '.join(MASK_EXTENSIONS)}."
        )
    try:
        out_dtype = np.dtype(dtype)
    except TypeError:
        out_dtype = None
    if out_dtype is None or out_dtype.kind not in "iu":
        raise BadRequest(
            f"Unsupported mask data type '{dtype}'. Use an integer type: uint8, int8, uint16, int16, "
            "uint32, int32, uint64 or int64."
        )

    mask = np.asarray(mask)
    size = tuple(reference.GetSize())
    if mask.shape != size:
        raise ValueError(f"mask shape {mask.shape} (i, j, k order) differs from the image size {size}")
    if mask.size and not np.can_cast(mask.dtype, out_dtype):  # uint8 into uint8 always fits: no pass over it
        low, high = mask.min(), mask.max()
        limits = np.iinfo(out_dtype)
        if low < limits.min or high > limits.max:
            raise BadRequest(
                f"The mask has label values from {low} to {high}, which do not fit in {out_dtype.name}; "
                "ask for a wider type such as uint16 or int32."
            )
    data = mask.astype(out_dtype, copy=False)
    if mask.dtype.kind not in "biu" and not np.array_equal(data, mask):
        raise ValueError("mask has values that are not whole numbers; labels must be integers")

    if ext in (".nii", ".nii.gz"):
        # NIfTI voxel data is the [i, j, k] array in Fortran order: ITK's header for this grid, then the
        # bytes (no copy for the Fortran-ordered masks the app's tasks return).
        header = _nifti_header(_geometry(reference), sitk.GetImageFromArray(np.zeros((1, 1), out_dtype)).GetPixelID())
        voxels = memoryview(np.asfortranarray(data).T).cast("B")
        if ext == ".nii":
            return header + voxels.tobytes()
        row_bytes = (data.shape[0] if data.ndim else 1) * data.itemsize
        return _gzip_sparse(header, voxels, row_bytes, level=1 if compress else 0)

    image = sitk.GetImageFromArray(np.ascontiguousarray(data.T), isVector=False)
    image.CopyInformation(reference)
    with tempfile.TemporaryDirectory(prefix="aiaa-mask-") as tmp:
        path = Path(tmp) / f"mask{ext}"
        _write(image, path, compress=compress and ext != ".nii")
        return path.read_bytes()


def _encode_png(mask_ij: np.ndarray, reference: sitk.Image, dtype: str) -> bytes:
    """PNG bytes of a 2D `[i, j]` mask the size of the 2D `reference` (i = PNG column, j = PNG row)."""
    if dtype not in PNG_DTYPES:
        raise BadRequest(f"Unsupported mask data type '{dtype}' for a PNG mask. Use uint8 or uint16.")
    mask = np.asarray(mask_ij)
    if mask.shape != tuple(reference.GetSize()):
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


def _geometry(image: sitk.Image) -> tuple:
    return (tuple(image.GetSize()), image.GetSpacing(), image.GetOrigin(), image.GetDirection())


@functools.lru_cache(maxsize=32)
def _nifti_header(geometry: tuple, pixel_id: int) -> bytes:
    """The header (up to the voxel data) ITK writes for a NIfTI image of this grid and pixel type.

    It depends on neither the pixel values nor, but for its `dim` field, the size: ITK writes a one-voxel
    image of the same geometry and the size is put into `dim` (NIfTI-1 or NIfTI-2 layout), so a new grid
    costs no full-size write.
    """
    size, spacing, origin, direction = geometry
    small = max(size) <= 32767  # else ITK writes NIfTI-2, which a one-voxel image would not be
    image = sitk.Image([1] * len(size) if small else [int(n) for n in size], pixel_id)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    with tempfile.TemporaryDirectory(prefix="aiaa-mask-") as tmp:
        path = Path(tmp) / "mask.nii"
        _write(image, path, compress=False)
        written = path.read_bytes()
    header = bytearray(written[: len(written) - image.GetNumberOfPixels() * image.GetSizeOfPixelComponent()])
    if not small:
        return bytes(header)
    order = "<" if int.from_bytes(header[:4], "little") in (348, 540) else ">"
    nifti2 = struct.unpack(order + "i", header[:4])[0] == 540
    offset, code = (16, "q") if nifti2 else (40, "h")
    struct.pack_into(f"{order}{len(size)}{code}", header, offset + struct.calcsize(code), *(int(n) for n in size))
    return bytes(header)


_ZERO_BLOCK = 1 << 20  # zero runs are spliced in as cached deflated blocks of this many bytes
_MIN_ZERO_RUN = 1 << 16  # shorter zero runs are deflated with the labels around them


@functools.lru_cache(maxsize=4)
def _deflated_zeros(level: int) -> tuple[bytes, int, tuple[int, ...]]:
    """`_ZERO_BLOCK` zero bytes as a self-contained raw-deflate segment, and how they change a CRC-32.

    CRC-32 is affine in its starting value: crc(zeros, v) = crc(zeros, 0) ^ XOR of table[i] over v's set bits.
    """
    zeros = bytes(_ZERO_BLOCK)
    base = zlib.crc32(zeros)
    table = tuple(zlib.crc32(zeros, 1 << bit) ^ base for bit in range(32))
    return _deflate_segment(zeros, level), base, table


def _deflate_segment(data, level: int) -> bytes:
    """Raw deflate of `data` ending byte-aligned (sync flush) and referring to nothing before it, so
    segments concatenate into one valid stream (as pigz does)."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)


def _gzip_sparse(header: bytes, voxels: memoryview, row_bytes: int, level: int) -> bytes:
    """One gzip member of header + voxels in which the runs of all-zero rows (`row_bytes` each, most of
    a mask) are spliced in from a cache instead of being deflated again."""
    values = np.frombuffer(voxels, dtype=np.uint8)
    segments, crc = [_deflate_segment(header, level)], zlib.crc32(header)
    if values.size:
        words = values.view(np.uint64) if row_bytes % 8 == 0 else values
        labelled = words.reshape(len(values) // row_bytes, -1).max(axis=1) > 0  # max: vectorised, any() is not
        edges = np.flatnonzero(np.diff(labelled.view(np.int8))) + 1
        zeros, base, table = _deflated_zeros(level)
        position = 0  # bytes before `position` are in `segments`
        for start, end in zip(np.r_[0, edges] * row_bytes, np.r_[edges, len(labelled)] * row_bytes, strict=True):
            if labelled[start // row_bytes] or end - start < _MIN_ZERO_RUN:
                continue
            blocks = (end - start) // _ZERO_BLOCK
            if blocks == 0:
                continue
            chunk = values[position:start]  # labels (and short zero runs) before this zero run
            segments.append(_deflate_segment(chunk, level))
            crc = zlib.crc32(chunk, crc)
            for _ in range(blocks):
                segments.append(zeros)
                crc = base ^ functools.reduce(operator.xor, (t for bit, t in enumerate(table) if crc >> bit & 1), 0)
            position = start + blocks * _ZERO_BLOCK
        chunk = values[position:]
        segments.append(_deflate_segment(chunk, level))
        crc = zlib.crc32(chunk, crc)
    final = zlib.compressobj(level, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)  # an empty last block
    size = (len(header) + len(values)) & 0xFFFFFFFF
    fastest = {1: 4, 9: 2}.get(level, 0)  # XFL, as Python's gzip sets it
    gzip_header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00" + bytes([fastest, 255])  # deflate, mtime 0, OS unknown
    return b"".join([gzip_header, *segments, final, struct.pack("<II", crc, size)])


def _write(image: sitk.Image, path: Path, *, compress: bool) -> None:
    writer = sitk.ImageFileWriter()
    writer.SetFileName(str(path))
    writer.SetUseCompression(compress)
    if compress:
        writer.SetCompressionLevel(1)
    writer.Execute(image)
