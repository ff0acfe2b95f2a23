"""Reading uploaded images and writing masks back on exactly the same grid.

Everything a client uploads passes through `read_image`, so this is the one place that turns hostile or
broken input into a clear 4xx (see `server.errors`) instead of a SimpleITK exception and a 500:

* the reader is chosen from the extension of the client's file name, so the error can name the format
  ("Could not read 'ct.nii.gz' as NIfTI ...");
* the image size is checked from the header before any pixel data is decoded (decompression bombs);
* NIfTI files are checked to be complete, because ITK silently zero-fills a truncated NIfTI;
* MetaImage and NRRD headers may not point at another file (ITK would happily read `/etc/passwd`);
* ZIP archives are never extracted by member name, only into generated names under a temp dir, with
  limits on member count and unpacked bytes.

Geometry is sacred: a mask goes back with the input's size, spacing, origin and direction
(`encode_mask` uses `CopyInformation`). Arrays handed to models are in `[i, j, k]` order, i.e. the
SimpleITK index order of the file (`to_array`), and `ras_affine` gives the matching nibabel/MONAI affine.
"""

from __future__ import annotations

import functools
import gzip
import logging
import math
import operator
import os
import re
import shutil
import stat
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.filereader import read_file_meta_info
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from server.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

log = logging.getLogger(__name__)

DEFAULT_MAX_VOXELS: int = 1024 * 1024 * 1024 // 2
"""Largest image accepted (voxels, all axes multiplied); `read_image` takes a per-call value."""

DEFAULT_MAX_FILES: int = 5000
"""Most files in one DICOM upload or ZIP archive: bounds work and temp-dir size on hostile input."""

MASK_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha")
"""Formats a mask can be returned in: all store the full 3D geometry."""

# extension -> (format name for messages, ITK ImageIO that must read it)
_VOLUME_FORMATS: dict[str, tuple[str, str]] = {
    ".nii.gz": ("NIfTI", "NiftiImageIO"),
    ".nii": ("NIfTI", "NiftiImageIO"),
    ".nrrd": ("NRRD", "NrrdImageIO"),
    ".mha": ("MetaImage", "MetaImageIO"),
    ".png": ("PNG", "PNGImageIO"),
    ".jpg": ("JPEG", "JPEGImageIO"),
    ".jpeg": ("JPEG", "JPEGImageIO"),
}

_SEND_INSTEAD = (
    "Send a NIfTI (.nii, .nii.gz), NRRD (.nrrd), MetaImage (.mha) file or a DICOM series "
    "(.dcm files or a .zip of them)."
)

_HEADER_SCAN_BYTES = 1024 * 1024  # MetaImage / NRRD headers are a few hundred bytes (segmentations' a few KB)
_ZIP_SLACK_BYTES = 256 * 1024 * 1024  # DICOM headers, overlays, odd extra files on top of the pixels
_GZIP_TRAILING_BYTES = 16 * 1024 * 1024  # tolerated junk after a NIfTI's pixel data before we stop reading
_CHUNK = 1024 * 1024

# Largest deviation of a slice from an evenly spaced stack, relative to the slice spacing, that is still
# read as one volume: real scanners jitter by ~1e-3 mm; a missing slice deviates by a whole spacing.
_SLICE_SPACING_TOLERANCE = 0.01

_DICOM_TAG_SERIES_DESCRIPTION = "0008|103e"
_DICOM_TAG_POSITION = "0020|0032"
_DICOM_TAG_SERIES_NUMBER = "0020|0011"


# --------------------------------------------------------------------------------------------- names


def upload_basename(filename: str) -> str:
    """The file name without the client's folders, which may be Windows (`C:\\Users\\dr\\ct.nii.gz`).

    Browsers and the Slicer plugin send the full local path; only the basename carries meaning (its
    extension picks the reader). The result is also safe as a file name in a temp dir: never empty,
    `.` or `..`, no control characters, at most 200 bytes (the extension is kept when shortening).
    """
    name = re.split(r"[\\/]", filename or "")[-1]
    name = re.sub(r"^[A-Za-z]:", "", name)  # drive-relative Windows path "C:ct.nii.gz"
    name = "".join(ch for ch in name if ch.isprintable()).strip()
    if name in ("", ".", ".."):
        return "upload"
    if len(name.encode()) > 200:
        ext = image_extension(name)
        ext = ext if len(ext.encode()) <= 20 else ""
        stem = name[: len(name) - len(ext)] if ext else name
        while len((stem + ext).encode()) > 200:
            stem = stem[:-1]
        name = stem + ext
    return name


def image_extension(filename: str) -> str:
    """Lower-case extension of the basename, with `.nii.gz` kept whole; `""` when there is none.

    The extension, not the content, selects the reader, so the error for a broken file can name the
    format the client meant to send.
    """
    base = re.split(r"[\\/]", filename or "")[-1].lower()
    if base.endswith(".nii.gz") and len(base) > len(".nii.gz"):
        return ".nii.gz"
    return os.path.splitext(base)[1]


# ------------------------------------------------------------------------------------------- reading


def read_image(
    paths: Sequence[Path],
    *,
    max_voxels: int = DEFAULT_MAX_VOXELS,
    max_files: int = DEFAULT_MAX_FILES,
    ledger: Ledger | None = None,
) -> sitk.Image:
    """Read an upload into one image, turning every kind of bad input into a 4xx `ApiError`.

    One volume file (.nii, .nii.gz, .nrrd, .mha, .png, .jpg) gives that image; one `.zip` gives the
    single DICOM series inside; several files are a DICOM series (each must be DICOM: `.dcm` or the
    `DICM` signature); a single DICOM file is a one-file series. The extension is taken from the file
    names on disk, so the caller must keep the client's basename (see `upload_basename`).
    `max_voxels` is checked from the header before pixel data is decoded, and the decoded bytes are
    charged to `ledger` (the request's memory budget, `server.budget`) at the same point; `max_files` caps
    the number of DICOM files and of ZIP members. Every image must hold its own pixels: a header that
    names another file is refused whatever that file is (no file outside the upload is ever opened), and
    a sheared or degenerate geometry is refused for every format alike.
    """
    paths = [Path(p) for p in paths]
    if not paths:
        raise BadRequest("No image file was uploaded. " + _SEND_INSTEAD)
    if len(paths) > max_files:
        raise PayloadTooLarge(f"Too many files: {len(paths)}; the limit is {max_files} files per image.")
    for path in paths:
        if path.stat().st_size == 0:
            raise BadRequest(f"The uploaded file '{path.name}' is empty.")

    if len(paths) == 1:
        path = paths[0]
        ext = image_extension(path.name)
        if ext == ".zip":
            return _read_zip(path, max_voxels=max_voxels, max_files=max_files, ledger=ledger)
        if ext in _VOLUME_FORMATS:
            return _read_volume(path, ext, max_voxels=max_voxels, ledger=ledger)
        if ext == ".dcm" or _has_dicom_signature(path):
            with tempfile.TemporaryDirectory(prefix="aiaa-dicom-") as tmp:
                _link_or_copy(path, Path(tmp) / "00000.dcm")
                return _read_dicom_dir(
                    Path(tmp), f"'{path.name}'", [path.name], max_voxels=max_voxels, all_dicom=True, ledger=ledger
                )
        raise UnsupportedMediaType(_unsupported_message(ext, path.name))

    for path in paths:
        if image_extension(path.name) != ".dcm" and not _has_dicom_signature(path):
            raise BadRequest(
                f"{len(paths)} files were uploaded, but '{path.name}' is not a DICOM file. Send one "
                "volume file, or a DICOM series (.dcm files or a .zip of them)."
            )
    images = [p for p in paths if p.name.upper() != "DICOMDIR"]  # the index of a DICOM disc, no pixels
    with tempfile.TemporaryDirectory(prefix="aiaa-dicom-") as tmp:
        for n, path in enumerate(images):
            _link_or_copy(path, Path(tmp) / f"{n:05d}.dcm")
        source = f"the {len(paths)} uploaded DICOM files"
        return _read_dicom_dir(
            Path(tmp), source, [p.name for p in images], max_voxels=max_voxels, all_dicom=True, ledger=ledger
        )


def _unsupported_message(ext: str, name: str) -> str:
    what = f"Unsupported file type '{ext}'." if ext else f"Unsupported file type: '{name}' has no extension."
    return f"{what} {_SEND_INSTEAD} 2D models also take .png and .jpg pictures."


def _has_dicom_signature(path: Path) -> bool:
    """DICOM Part 10 files carry `DICM` after a 128-byte preamble; PACS exports often lack `.dcm`."""
    with open(path, "rb") as f:
        f.seek(128)
        return f.read(4) == b"DICM"


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link when possible (uploads and temp dirs usually share a file system), else copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _check_voxels(size: Sequence[int], max_voxels: int) -> None:
    """Refuse an image by its header size, before its pixel data is decoded or decompressed."""
    if int(np.prod([int(s) for s in size], dtype=object)) > max_voxels:
        dims = "×".join(str(int(s)) for s in size)
        raise PayloadTooLarge(f"The image is too large: {dims} voxels; the limit is {max_voxels} voxels.")


def _damaged(name: str, format_name: str) -> BadRequest:
    return BadRequest(f"Could not read '{name}' as {format_name}: the file is damaged or truncated.")


def _itk_error(exc: RuntimeError, name: str, format_name: str) -> BadRequest:
    """Map an ITK read failure to a message for a person; ITK's own text goes to the log only."""
    text = str(exc)
    log.info("ITK could not read %r as %s: %s", name, format_name, text.strip().splitlines()[-1:])
    if "orthonormal" in text:
        return BadRequest(
            f"Could not read '{name}' as {format_name}: its orientation matrix is sheared or degenerate, "
            "which cannot be used. Re-save the image with a proper orientation."
        )
    return _damaged(name, format_name)


def _read_volume(path: Path, ext: str, *, max_voxels: int, ledger: Ledger | None) -> sitk.Image:
    format_name, image_io = _VOLUME_FORMATS[ext]
    name = path.name
    if ext == ".mha":
        _check_metaimage_is_local(path, name)
    elif ext == ".nrrd":
        _check_nrrd_is_attached(path, name)
    elif format_name == "NIfTI":
        _check_nifti_is_single_file(path, name)

    reader = sitk.ImageFileReader()
    reader.SetImageIO(image_io)
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise _itk_error(exc, name, format_name) from None
    components = max(1, reader.GetNumberOfComponents())  # values, not pixels, are what is allocated
    _check_voxels([*reader.GetSize(), components] if components > 1 else reader.GetSize(), max_voxels)
    _check_geometry(reader, f"'{name}'", format_name)
    _charge(ledger, reader)

    with tempfile.TemporaryDirectory(prefix="aiaa-read-") as tmp:
        if format_name == "NIfTI":
            reader.SetFileName(str(_complete_nifti(path, Path(tmp))))
        try:
            return reader.Execute()
        except RuntimeError as exc:
            raise _itk_error(exc, name, format_name) from None


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


def _charge(ledger: Ledger | None, info: sitk.ImageFileReader, size: Sequence[int] | None = None) -> None:
    if ledger is not None:
        ledger.charge_image(ImageHeader.of(info, size))


_ORTHONORMAL_TOLERANCE = 1e-3  # scanners' direction cosines are orthogonal to ~1e-6; ITK's NIfTI check is 1e-4


def _check_geometry(info: sitk.ImageFileReader, source: str, format_name: str) -> None:
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
        raise _damaged(name, "MetaImage")
    line_start = max(head.rfind(b"\n", 0, mention.start()), head.rfind(b"\r", 0, mention.start())) + 1
    header = head[:line_start]
    if b"\0" in header or re.search(rb"\r(?!\n)", header):
        raise _damaged(name, "MetaImage")
    if not _METAIMAGE_LOCAL.match(head, line_start):
        raise _separate_data(name, "MetaImage", ".mha")
    declared = re.search(rb"(?m)^[ \t]*CompressedDataSize[ \t]*[=:][ \t]*(\d+)", header)
    if declared and (len(declared[1]) > 19 or int(declared[1]) > path.stat().st_size):  # MetaIO allocates it
        raise _damaged(name, "MetaImage")


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
        raise _damaged(name, "NRRD")
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
    raise _damaged(name, "NRRD")  # no end of header where a real one ends


def _check_nifti_is_single_file(path: Path, name: str) -> None:
    """A NIfTI must be one file (`n+1`/`n+2` magic); an Analyze or NIfTI `.hdr` names an `.img` beside it."""
    try:
        with open(path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
        with gzip.open(path, "rb") if gzipped else open(path, "rb") as f:
            head = f.read(540)
    except (OSError, EOFError, zlib.error):
        raise _damaged(name, "NIfTI") from None
    sizes = (int.from_bytes(head[:4], "little"), int.from_bytes(head[:4], "big"))
    if 348 in sizes and len(head) >= 348 and head[344:348] != b"n+1\x00":  # NIfTI-1 pair or Analyze 7.5
        raise _separate_data(name, "NIfTI/Analyze", ".nii or .nii.gz")
    if 540 in sizes and len(head) >= 8 and head[4:8] != b"n+2\x00":  # NIfTI-2 pair
        raise _separate_data(name, "NIfTI", ".nii or .nii.gz")


def _complete_nifti(path: Path, tmp: Path) -> Path:
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
        raise _damaged(name, "NIfTI") from None
    if data_end is None:
        raise _damaged(name, "NIfTI")
    if not gzipped:
        if path.stat().st_size < data_end:
            raise _damaged(name, "NIfTI")
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
        raise _damaged(name, "NIfTI") from None
    if written < data_end:
        raise _damaged(name, "NIfTI")
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


# --------------------------------------------------------------------------------------------- DICOM


def _read_dicom_dir(
    directory: Path,
    source: str,
    names: Sequence[str],
    *,
    max_voxels: int,
    all_dicom: bool,
    ledger: Ledger | None = None,
) -> sitk.Image:
    """Read the one DICOM image series in `directory`, whose files are named `00000.dcm`, `00001.dcm`...

    GDCM silently leaves out files it cannot parse and ITK silently averages over missing slices, so
    both are checked here: a mask on such a grid would not match the client's series.

    `names[n]` is the client's name of file `n` (for messages); `source` names the upload ("'ct.zip'").
    `all_dicom`: every file was sent as DICOM (not a ZIP that may hold other files), so one that GDCM
    cannot parse is damaged even without the `DICM` signature.
    """
    try:
        series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(directory))
    except RuntimeError:
        series_ids = ()
    listed: set[str] = set()
    series: list[tuple[list[str], sitk.ImageFileReader]] = []
    for series_id in series_ids:
        try:
            files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(directory), series_id))
        except RuntimeError:
            continue
        listed.update(Path(f).name for f in files)
        if not files:
            continue
        info = sitk.ImageFileReader()
        info.SetImageIO("GDCMImageIO")
        info.SetFileName(files[0])
        try:
            info.ReadImageInformation()  # fails for DICOM without pixels (DICOMDIR, reports)
        except RuntimeError:
            continue
        series.append((files, info))

    for n, client_name in enumerate(names):
        generated = directory / f"{n:05d}.dcm"
        if generated.name not in listed and (all_dicom or _has_dicom_signature(generated)):
            where = "" if source == f"'{client_name}'" else f" in {source}"
            raise BadRequest(
                f"Could not read '{client_name}'{where} as DICOM: the file is damaged or truncated."
            )
    if not series:
        shown = ": " + ", ".join(names[:5]) + (", ..." if len(names) > 5 else "") if names else ""
        found = f"{len(names)} file{'s' if len(names) != 1 else ''}{shown}"
        raise BadRequest(f"No DICOM images found in {source} ({found}). " + _SEND_INSTEAD)
    if len(series) > 1:
        described = ", ".join(
            f"{_series_label(info, n)} ({len(files)} images)" for n, (files, info) in enumerate(series, 1)
        )
        raise BadRequest(
            f"Found {len(series)} DICOM series in {source}: {described}. Send one series at a time."
        )

    files, info = series[0]
    size = list(info.GetSize())
    if len(size) == 2:
        size.append(1)
    size[2] *= len(files)
    _check_voxels(size, max_voxels)
    _check_dicom_pixels_present(files, info, source)
    _check_geometry(info, source, "DICOM")
    _charge(ledger, info, size)

    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()  # per-slice positions, for the evenness check below
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        log.info("ITK could not read DICOM series from %s: %s", source, str(exc).strip().splitlines()[-1:])
        raise BadRequest(f"Could not read {source} as DICOM: the files are damaged or incomplete.") from None
    if _slice_deviation(reader, image, len(files)) > _SLICE_SPACING_TOLERANCE * image.GetSpacing()[2]:
        raise BadRequest(
            f"The DICOM series in {source} has missing or unevenly spaced slices, so it is not one regular "
            "volume. Send the complete series."
        )
    if image.GetDimension() == 2:  # defensive: GDCM reports single-frame files as 3D
        image = sitk.JoinSeries(image)
    return image


_UNCOMPRESSED_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")


def _check_dicom_pixels_present(files: Sequence[str], info: sitk.ImageFileReader, source: str) -> None:
    """Every file of an uncompressed series must hold the pixel bytes its header claims.

    GDCM zero-fills what is missing, so a 1 KB file whose Rows and Columns claim 20000 would become an
    800 MB image of zeros: refused here from file sizes, before anything is decoded. (Compressed pixel
    data has no such bound; its decoded size is charged to the memory budget like any image.)
    """

    def meta(key: str) -> str:
        return info.GetMetaData(key).strip(" \0") if info.HasMetaDataKey(key) else ""

    try:
        bits = int(meta("0028|0100") or 16)
        samples = int(meta("0028|0002") or 1)
    except ValueError:
        raise BadRequest(f"Could not read {source} as DICOM: the files are damaged or incomplete.") from None
    claimed = int(np.prod([int(n) for n in info.GetSize()], dtype=object)) * samples * math.ceil(bits / 8)
    short = [f for f in files if os.stat(f).st_size < claimed]
    if any(_transfer_syntax(f) in _UNCOMPRESSED_SYNTAXES for f in short):
        raise BadRequest(
            f"Could not read {source} as DICOM: a file holds fewer pixel bytes than its header claims "
            f"({'×'.join(str(n) for n in info.GetSize())} pixels); the files are damaged or incomplete."
        )


def _transfer_syntax(path: str) -> str:
    """The file's transfer syntax UID; a file without a file meta header is implicit VR little endian."""
    try:
        return str(read_file_meta_info(path).get("TransferSyntaxUID", "1.2.840.10008.1.2")).strip(" \0")
    except Exception:  # pydicom raises many types on a damaged meta header; GDCM read it as uncompressed
        return "1.2.840.10008.1.2"


def _slice_deviation(reader: sitk.ImageSeriesReader, image: sitk.Image, count: int) -> float:
    """Largest distance (mm) of a slice from where an evenly spaced stack puts it; 0 if not checkable.

    ITK stacks the slices at the average spacing without failing (its own flag fires on any rounding
    and its value cannot be read from SimpleITK), so a missing slice would shift every later one.
    """
    if count < 2 or image.GetDimension() != 3:
        return 0.0
    positions = []
    for k in range(count):
        if not reader.HasMetaDataKey(k, _DICOM_TAG_POSITION):
            return 0.0
        try:
            positions.append([float(v) for v in reader.GetMetaData(k, _DICOM_TAG_POSITION).split("\\")])
        except ValueError:
            return 0.0
    if any(len(p) != 3 for p in positions):
        return 0.0
    step = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)[:, 2]
    along = (np.array(positions) - positions[0]) @ step
    expected = np.arange(count) * image.GetSpacing()[2]
    return float(np.abs(along - expected).max())


def _series_label(info: sitk.ImageFileReader, n: int) -> str:
    for key in (_DICOM_TAG_SERIES_DESCRIPTION, _DICOM_TAG_SERIES_NUMBER):
        if info.HasMetaDataKey(key) and info.GetMetaData(key).strip():
            text = info.GetMetaData(key).strip()
            return f"'{text}'" if key == _DICOM_TAG_SERIES_DESCRIPTION else f"series number {text}"
    return f"series {n}"


def _zip_byte_limit(max_voxels: int) -> int:
    """Unpacked bytes allowed for a ZIP: 4 bytes per allowed voxel plus room for headers."""
    return max_voxels * 4 + _ZIP_SLACK_BYTES


def _is_regular_member(info: zipfile.ZipInfo) -> bool:
    """Only plain files count: folders, symlinks, devices and macOS metadata are skipped."""
    if info.is_dir():
        return False
    mode = info.external_attr >> 16
    if info.create_system == 3 and stat.S_IFMT(mode) and not stat.S_ISREG(mode):
        return False
    parts = re.split(r"[\\/]", info.filename)
    if "__MACOSX" in parts or parts[-1].startswith("._") or parts[-1] in (".DS_Store", "DICOMDIR"):
        return False
    return True


def _read_zip(path: Path, *, max_voxels: int, max_files: int, ledger: Ledger | None) -> sitk.Image:
    """Unpack a ZIP of DICOM files safely and read the single series inside.

    Members are never extracted by name (no path traversal): each regular file is streamed into a
    generated name under a fresh temp dir, counting the real unpacked bytes against the limit.
    """
    name = path.name
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise BadRequest(
            f"Could not read '{name}' as a ZIP archive: the file is damaged or truncated."
        ) from None
    max_bytes = _zip_byte_limit(max_voxels)
    with archive, tempfile.TemporaryDirectory(prefix="aiaa-zip-") as tmp:
        infos = archive.infolist()
        if len(infos) > max_files:
            raise PayloadTooLarge(
                f"The ZIP archive '{name}' holds {len(infos)} entries; the limit is {max_files} files."
            )
        members = [info for info in infos if _is_regular_member(info)]
        if not members:
            raise BadRequest(f"The ZIP archive '{name}' contains no files. " + _SEND_INSTEAD)
        declared = sum(info.file_size for info in members)
        if declared > max_bytes:
            raise PayloadTooLarge(_zip_too_large(name, declared, max_bytes))

        total = 0
        for n, info in enumerate(members):
            try:
                with archive.open(info) as src, open(Path(tmp) / f"{n:05d}.dcm", "wb") as dst:
                    while chunk := src.read(_CHUNK):
                        total += len(chunk)
                        if total > max_bytes:
                            raise PayloadTooLarge(_zip_too_large(name, total, max_bytes))
                        dst.write(chunk)
            except RuntimeError:  # zipfile: "File ... is encrypted, password required"
                raise BadRequest(
                    f"The ZIP archive '{name}' is password-protected; send it without a password."
                ) from None
            except NotImplementedError:
                raise BadRequest(
                    f"The ZIP archive '{name}' uses a compression method that cannot be read here; "
                    "re-create it with standard (deflate) compression."
                ) from None
            except (zipfile.BadZipFile, zlib.error, EOFError, ValueError):
                raise BadRequest(
                    f"Could not read '{name}' as a ZIP archive: the file is damaged or truncated."
                ) from None
        shown = [upload_basename(info.filename) for info in members]
        return _read_dicom_dir(
            Path(tmp), f"'{name}'", shown, max_voxels=max_voxels, all_dicom=False, ledger=ledger
        )


def _zip_too_large(name: str, size: int, limit: int) -> str:
    return (
        f"The ZIP archive '{name}' unpacks to more than {limit // 1_000_000} MB "
        f"({size // 1_000_000} MB or more); send a smaller image."
    )


# ------------------------------------------------------------------------------------ model handoff


def require_3d(image: sitk.Image, model_name: str) -> None:
    """Refuse a 2D picture (or a 4D or RGB volume) for a model that segments 3D scalar volumes."""
    dim = image.GetDimension()
    if dim != 3:
        size = "×".join(str(s) for s in image.GetSize())
        raise BadRequest(f"Model '{model_name}' needs a 3D volume; the uploaded image is {dim}D ({size}).")
    channels = image.GetNumberOfComponentsPerPixel()
    if channels != 1:
        raise BadRequest(
            f"Model '{model_name}' needs a single-channel (grayscale) volume; the uploaded image has "
            f"{channels} channels per voxel, like a colour picture."
        )


def to_array(image: sitk.Image) -> np.ndarray:
    """Pixels in `[i, j, k]` order (the file's index order), native dtype; channels last if any.

    `sitk.GetArrayFromImage` gives `[k, j, i]`; points in the API are `[i, j, k]`, so models and
    point prompts must use this one. The result is a transposed view (Fortran-ordered), no copy.
    """
    array = sitk.GetArrayFromImage(image)
    dim = image.GetDimension()
    if array.ndim > dim:  # vector pixels: [k, j, i, c] -> [i, j, k, c]
        return np.transpose(array, (*reversed(range(dim)), dim))
    return array.T


def ras_affine(image: sitk.Image) -> np.ndarray:
    """4×4 float64 affine from `[i, j, k]` voxel index to RAS millimetres, as nibabel and MONAI expect.

    SimpleITK is LPS; this is `diag(-1, -1, 1, 1) @ [direction · diag(spacing) | origin]`, equal to the
    affine nibabel reads from the NIfTI that SimpleITK writes for the same image. 2D images get a unit
    third axis.
    """
    dim = image.GetDimension()
    if dim not in (2, 3):
        raise ValueError(f"ras_affine supports 2D and 3D images, not {dim}D")
    direction = np.eye(3)
    direction[:dim, :dim] = np.array(image.GetDirection(), dtype=np.float64).reshape(dim, dim)
    spacing = np.ones(3)
    spacing[:dim] = image.GetSpacing()
    origin = np.zeros(3)
    origin[:dim] = image.GetOrigin()
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    affine = np.eye(4)
    affine[:3, :3] = lps_to_ras @ direction @ np.diag(spacing)
    affine[:3, 3] = lps_to_ras @ origin
    return affine


def to_metatensor(image: sitk.Image) -> MetaTensor:
    """The image as MONAI's `ITKReader` would load it: channel-first `[1, i, j, k]` with its RAS affine.

    Our server and trainers hand this to the app's tasks, so the pipeline runs the same as when stock
    MONAI Label loads the file from a path. The tensor is a view of SimpleITK's buffer copy in its own
    (Fortran) order: a C-ordered copy of a 512×512×100 CT costs about a second on 2 cores.
    """
    return MetaTensor(torch.from_numpy(to_array(image))[None], affine=torch.from_numpy(ras_affine(image)))


# --------------------------------------------------------------------------------------------- masks


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
    exactly only when they are float32 numbers (all real scanner values are).
    """
    ext = extension.lower().strip()
    if not ext.startswith("."):
        ext = "." + ext
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


# ------------------------------------------------------------------------------------- DICOM writer

_CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters): 10 significant digits, far below 1e-4 mm."""
    text = f"{float(value):.10g}"
    return "0" if text == "-0" else text


def write_dicom_series(
    image: sitk.Image, out_dir: Path, *, series_description: str = "phantom"
) -> list[Path]:
    """Write `image` as a CT DICOM series, one file per k slice; return the files in slice order.

    Used to build realistic DICOM inputs (tests, benchmarks) from any volume: int16 pixels with
    RescaleSlope/Intercept, per-slice ImagePositionPatient, ImageOrientationPatient, PixelSpacing,
    SliceThickness, shared Study/Series/FrameOfReference UIDs, InstanceNumber, Modality CT, so that
    `read_image(files)` returns the same grid and values (integer images whose value range spans at most
    65536 exactly; others are quantized to 65536 levels).

    DICOM stacks slices along row × column (the slice normal), so a left-handed grid
    (det(direction) < 0, e.g. LAS) cannot be stored as is: it is written as the equivalent right-handed
    grid with k reversed (origin moved to the last slice, third direction negated). Every voxel keeps
    its physical position and value; only the k index order changes.
    """
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError("write_dicom_series needs a 3D single-channel image")
    pixels = sitk.GetArrayFromImage(image)  # [k, j, i]
    spacing = np.array(image.GetSpacing(), dtype=np.float64)
    origin = np.array(image.GetOrigin(), dtype=np.float64)
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    row, col, step = direction[:, 0], direction[:, 1], direction[:, 2].copy()
    normal = np.cross(row, col)
    if np.dot(normal, step) < 0:  # left-handed: store the same voxels with k reversed
        origin = origin + (pixels.shape[0] - 1) * spacing[2] * step
        step = -step
        pixels = pixels[::-1]

    stored, slope, intercept = _to_int16(pixels)
    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for k in range(stored.shape[0]):
        position = origin + k * spacing[2] * step
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = _CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        path = out_dir / f"slice_{k:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.is_little_endian = True
        ds.is_implicit_VR = False
        ds.SOPClassUID = _CT_IMAGE_STORAGE
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.Modality = "CT"
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        ds.PatientName = "Phantom^Test"
        ds.PatientID = "PHANTOM"
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.InstanceNumber = k + 1
        ds.SeriesDescription = series_description
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row, *col)]
        ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]  # row spacing (j), column spacing (i)
        ds.SliceThickness = _ds(spacing[2])
        ds.SliceLocation = _ds(float(np.dot(position, normal)))
        ds.Rows, ds.Columns = int(stored.shape[1]), int(stored.shape[2])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = _ds(intercept)
        ds.RescaleSlope = _ds(slope)
        ds.RescaleType = "HU"
        ds.PixelData = np.ascontiguousarray(stored[k]).astype("<i2").tobytes()
        ds.save_as(str(path), write_like_original=False)
        files.append(path)
    return files


def _to_int16(pixels: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Stored int16 values with slope and intercept such that `stored * slope + intercept == pixels`."""
    if pixels.size == 0:
        return pixels.astype(np.int16), 1.0, 0.0
    low, high = float(pixels.min()), float(pixels.max())
    whole = pixels.dtype.kind in "biu" or bool(np.all(np.mod(pixels, 1) == 0))
    if whole and low >= -32768 and high <= 32767:
        return pixels.astype(np.int16), 1.0, 0.0
    if whole and high - low <= 65535:
        intercept = low + 32768
        return (pixels.astype(np.float64) - intercept).astype(np.int16), 1.0, intercept
    slope = (high - low) / 65535 if high > low else 1.0
    intercept = low + 32768 * slope
    stored = np.clip(np.round((pixels.astype(np.float64) - intercept) / slope), -32768, 32767)
    return stored.astype(np.int16), slope, intercept
