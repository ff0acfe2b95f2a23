"""Checks on an uploaded image's header, per format, before any pixel is decoded; and what to tell the client.

Nothing from the network is trusted, and ITK reads whatever a header says, so the header is read and
checked here first:

* the image size, from the header (decompression bombs), and its cost charged to the request's budget;
* the same geometry rules for every format (finite positive spacing, orthonormal direction);
* MetaImage and NRRD headers may not point at another file (ITK would happily read `/etc/passwd`);
* a NIfTI must be one complete file: ITK silently zero-fills a truncated one, and a `.hdr` names an `.img`.

ITK's own errors (`aiaa_core.volumes.UnreadableImage`) become a 400 for a person in `unreadable`, the one place.
"""

from __future__ import annotations

import gzip
import logging
import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from aiaa_core.volumes import UnreadableImage

from .errors import BadRequest, PayloadTooLarge

log = logging.getLogger(__name__)

_HEADER_SCAN_BYTES = 1024 * 1024  # MetaImage / NRRD headers are a few hundred bytes (segmentations' a few KB)
_GZIP_TRAILING_BYTES = 16 * 1024 * 1024  # tolerated junk after a NIfTI's pixel data before we stop reading
_CHUNK = 1024 * 1024
_ORTHONORMAL_TOLERANCE = 1e-3  # scanners' direction cosines are orthogonal to ~1e-6; ITK's NIfTI check is 1e-4


# ------------------------------------------------------------------------------------ size and budget


@dataclass(frozen=True)
class ImageHeader:
    """An image's grid and pixel size as its header states them, before (or without) decoding pixels."""

    size: tuple[int, ...]
    spacing: tuple[float, ...]
    direction: tuple[float, ...]
    pixel_bytes: int  # per voxel, all components

    @property
    def voxels(self) -> int:
        return math.prod(self.size)

    @property
    def nbytes(self) -> int:
        return self.voxels * self.pixel_bytes

    def dims(self) -> str:
        return "×".join(str(n) for n in self.size)

    @classmethod
    def of(cls, image: sitk.Image | sitk.ImageFileReader, size: Sequence[int] | None = None) -> ImageHeader:
        """The header of a decoded image, or of what a reader read (`size` overrides, e.g. a DICOM stack's)."""
        if isinstance(image, sitk.Image):
            pixel = image.GetSizeOfPixelComponent() * image.GetNumberOfComponentsPerPixel()
        else:
            components = max(1, image.GetNumberOfComponents())  # from the header: never allocated here
            probe = sitk.Image([1] * max(2, len(image.GetSize())), image.GetPixelID(), 1)
            pixel = probe.GetSizeOfPixelComponent() * components
        size = tuple(int(n) for n in (size if size is not None else image.GetSize()))
        spacing = tuple(image.GetSpacing())
        direction = tuple(image.GetDirection())
        if len(spacing) < len(size):  # a DICOM slice's header describes a 2D grid: a unit third axis
            spacing = (*spacing, 1.0)
            if len(direction) == 4:
                square = np.eye(3)
                square[:2, :2] = np.reshape(direction, (2, 2))
                direction = tuple(square.ravel())
        return cls(size, spacing, direction, pixel)


class Ledger(Protocol):
    """A request's memory budget (`server.budget.MemoryLedger`), charged before any pixel is decoded."""

    def charge_image(self, header: ImageHeader) -> None: ...


def charge(ledger: Ledger | None, info: sitk.ImageFileReader, size: Sequence[int] | None = None) -> None:
    """Charge the decoded size of what `info`'s header describes to the request's budget, if any."""
    if ledger is not None:
        ledger.charge_image(ImageHeader.of(info, size))


def check_voxels(size: Sequence[int], max_voxels: int) -> None:
    """Refuse an image by its header size, before its pixel data is decoded or decompressed."""
    if int(np.prod([int(s) for s in size], dtype=object)) > max_voxels:
        dims = "×".join(str(int(s)) for s in size)
        raise PayloadTooLarge(f"The image is too large: {dims} voxels; the limit is {max_voxels} voxels.")


# ----------------------------------------------------------------------------------- refusal messages


def damaged(name: str, format_name: str) -> BadRequest:
    """The 400 for a file whose bytes do not make the image its header promises."""
    return BadRequest(f"Could not read '{name}' as {format_name}: the file is damaged or truncated.")


def unreadable(
    exc: UnreadableImage, source: str, format_name: str, damage: str = "the file is damaged or truncated"
) -> BadRequest:
    """Map an ITK read failure to a message for a person; ITK's own text goes to the log only.

    `source` names the upload as the message shows it (`'ct.nii.gz'`, `the 40 uploaded DICOM files`).
    """
    log.info("ITK could not read %s as %s: %s", source, format_name, str(exc).strip().splitlines()[-1:])
    if exc.sheared:
        return BadRequest(
            f"Could not read {source} as {format_name}: its orientation matrix is sheared or degenerate, "
            "which cannot be used. Re-save the image with a proper orientation."
        )
    return BadRequest(f"Could not read {source} as {format_name}: {damage}.")


# ------------------------------------------------------------------------------------------- geometry


def check_geometry(info: sitk.ImageFileReader, source: str, format_name: str) -> None:
    """The same geometry rules for every format, from the header: positive finite spacing, finite origin,
    an orthonormal direction (ITK's NIfTI reader refuses shear; its NRRD, MetaImage and DICOM readers do
    not, and models would then resample onto a wrong or degenerate grid)."""
    dim = len(info.GetSize())
    spacing = np.array(info.GetSpacing(), dtype=float)
    origin = np.array(info.GetOrigin(), dtype=float)
    direction = np.array(info.GetDirection(), dtype=float).reshape(dim, dim)
    if not (np.isfinite(spacing).all() and (spacing > 0).all() and np.isfinite(origin).all()):
        raise BadRequest(
            f"Could not read {source} as {format_name}: its voxel spacing or origin is zero, negative or not a "
            "number, which cannot be used. Re-save the image with a proper geometry."
        )
    if not np.isfinite(direction).all() or np.abs(direction.T @ direction - np.eye(dim)).max() > _ORTHONORMAL_TOLERANCE:
        raise BadRequest(
            f"Could not read {source} as {format_name}: its orientation matrix is sheared or degenerate, "
            "which cannot be used. Re-save the image with a proper orientation."
        )


# -------------------------------------------------------------------------------- one file, complete


def check_single_file(path: Path, name: str, format_name: str) -> None:
    """Refuse a MetaImage, NRRD or NIfTI header that names a separate data file (whether it exists or not)."""
    if format_name == "MetaImage":
        _check_metaimage_is_local(path, name)
    elif format_name == "NRRD":
        _check_nrrd_is_attached(path, name)
    elif format_name == "NIfTI":
        _check_nifti_is_single_file(path, name)


_LINE_END = re.compile(rb"\r\n|\r|\n")
"""Where ITK's readers end a header line: at \n, \r\n or a bare \r (teem's `airOneLine`)."""

_DATA_FILE = re.compile(rb"(?i)data[\s_]*file")
"""Any spelling of a data-file key (NRRD `data file`/`datafile`, MetaImage `ElementDataFile`)."""

_METAIMAGE_LOCAL = re.compile(rb"[ \t]*ElementDataFile[ \t]*[=:][ \t]*(?i:local)[ \t]*\r?\n")

# NRRD header fields (teem's `nrrdField`, spaces removed, lower case) that hold no reference to a file.
_NRRD_FIELDS = frozenset(
    "content number type blocksize dimension space spacedimension sizes spacings thicknesses axismins "
    "axismaxs spacedirections centers centerings kinds labels units min max oldmin oldmax endian encoding "
    "lineskip byteskip sampleunits spaceunits spaceorigin measurementframe".split()
)


def _separate_data(name: str, format_name: str, single: str) -> BadRequest:
    """One message for every header that names another file, whether that file exists or not (no oracle)."""
    return BadRequest(
        f"The {format_name} file '{name}' refers to a separate data file; send a single {single} file with the "
        "pixel data inside."
    )


def _check_metaimage_is_local(path: Path, name: str) -> None:
    """A MetaImage header names its data file (`ElementDataFile`); only `LOCAL` (inside the .mha) is safe.

    Anything else (a path, `LIST`, a `%d` pattern) would make ITK read files of the client's choosing,
    e.g. `/etc/shadow` or another patient's upload. MetaIO stops its header at the first `ElementDataFile`,
    so the first mention of a data file in any spelling must be exactly that key, at the start of a line,
    set to LOCAL; a bare carriage return (read differently by MetaIO's key and value parsers) is refused.
    """
    with open(path, "rb") as f:
        head = f.read(_HEADER_SCAN_BYTES)
    mention = _DATA_FILE.search(head)
    if mention is None:
        raise damaged(name, "MetaImage")
    line_start = max(head.rfind(b"\n", 0, mention.start()), head.rfind(b"\r", 0, mention.start())) + 1
    header = head[:line_start]
    if b"\0" in header or re.search(rb"\r(?!\n)", header):
        raise damaged(name, "MetaImage")
    if not _METAIMAGE_LOCAL.match(head, line_start):
        raise _separate_data(name, "MetaImage", ".mha")
    declared = re.search(rb"(?m)^[ \t]*CompressedDataSize[ \t]*[=:][ \t]*(\d+)", header)
    if declared and (len(declared[1]) > 19 or int(declared[1]) > path.stat().st_size):  # MetaIO allocates it
        raise damaged(name, "MetaImage")


def _check_nrrd_is_attached(path: Path, name: str) -> None:
    """A NRRD header may name detached data (`data file:` a path, `LIST` or a `%d` pattern); refuse it.

    The header is split into lines as ITK's teem reader splits it (any line ending) and must end (an
    empty line) within the scanned bytes; every line must be a comment, a `key:=value` pair or a known
    field that holds no file name, and no line may mention a data file in any spelling.
    """
    with open(path, "rb") as f:
        head = f.read(_HEADER_SCAN_BYTES)
    lines = _LINE_END.split(head)
    if not lines[0].startswith(b"NRRD"):
        raise damaged(name, "NRRD")
    for n, line in enumerate(lines[1:-1], 1):  # the last piece may be cut by the scan limit
        if line == b"":
            return  # end of header: the pixel data follows
        if _DATA_FILE.search(line) or b"\0" in line:
            raise _separate_data(name, "NRRD", ".nrrd")
        if line.startswith(b"#"):
            continue
        key, sep, _ = line.partition(b":")
        if sep and line[len(key) + 1 : len(key) + 2] == b"=":
            continue  # key:=value
        if re.sub(rb"\s", b"", key.lower()).decode("latin-1") not in _NRRD_FIELDS:
            raise BadRequest(
                f"The NRRD file '{name}' has a header line that is not a NRRD field this server reads "
                f"(line {n + 1}); send a standard .nrrd file with the pixel data inside."
            )
    raise damaged(name, "NRRD")  # no end of header where a real one ends


def _check_nifti_is_single_file(path: Path, name: str) -> None:
    """A NIfTI must be one file (`n+1`/`n+2` magic); an Analyze or NIfTI `.hdr` names an `.img` beside it."""
    try:
        with open(path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
        with gzip.open(path, "rb") if gzipped else open(path, "rb") as f:
            head = f.read(540)
    except (OSError, EOFError, zlib.error):
        raise damaged(name, "NIfTI") from None
    sizes = (int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big"))
    if 348 in sizes and len(head) >= 348 and head[344:348] != b"n+1\x00":  # NIfTI-1 pair or Analyze 7.5
        raise _separate_data(name, "NIfTI/Analyze", ".nii or .nii.gz")
    if 540 in sizes and len(head) >= 8 and head[4:8] != b"n+2\x00":  # NIfTI-2 pair
        raise _separate_data(name, "NIfTI", ".nii or .nii.gz")


def complete_nifti(path: Path, tmp: Path) -> Path:
    """Return a NIfTI path whose pixel data is known to be complete (ITK zero-fills truncated files).

    A gzipped file is decompressed once into `tmp` (ITK then reads it without decompressing again),
    checking the gzip CRC and that the stream holds all the bytes the header promises.
    """
    name = path.name
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    try:
        with gzip.open(path, "rb") if gzipped else open(path, "rb") as f:
            data_end = _nifti_data_end(f.read(540))
    except (OSError, EOFError, zlib.error):
        raise damaged(name, "NIfTI") from None
    if data_end is None:
        raise damaged(name, "NIfTI")
    if not gzipped:
        if path.stat().st_size < data_end:
            raise damaged(name, "NIfTI")
        return path

    out = tmp / "image.nii"
    written = 0
    try:
        with gzip.open(path, "rb") as src, open(out, "wb") as dst:
            while chunk := src.read(_CHUNK):
                keep = chunk[: max(0, data_end - written)]
                dst.write(keep)
                written += len(chunk)
                if written > data_end + _GZIP_TRAILING_BYTES:
                    break  # all pixels are there; don't decompress a bomb's tail
    except (OSError, EOFError, zlib.error):  # gzip.BadGzipFile is an OSError; EOFError: truncated
        raise damaged(name, "NIfTI") from None
    if written < data_end:
        raise damaged(name, "NIfTI")
    return out


def _nifti_data_end(head: bytes) -> int | None:
    """Byte offset where a single-file NIfTI-1/2's pixel data ends, from its header; None if not one."""
    if len(head) < 348:
        return None
    size_le = int.from_bytes(head[:4], "little")
    size_be = int.from_bytes(head[:4], "big")
    try:
        if 348 in (size_le, size_be):
            header = nib.Nifti1Header(head[:348], check=False)
        elif 540 in (size_le, size_be) and len(head) >= 540:
            header = nib.Nifti2Header(head[:540], check=False)
        else:
            return None
        if not bytes(header["magic"]).startswith((b"n+1\x00", b"n+2\x00")):
            return None  # .hdr/.img pair: ITK would look for a second file that is not there
        shape = header.get_data_shape()
        itemsize = header.get_data_dtype().itemsize
        offset = int(header.get_data_offset())
    except Exception:  # nibabel raises many types on a garbage header; all mean "not a valid NIfTI"
        return None
    return offset + int(np.prod(shape, dtype=object)) * itemsize
