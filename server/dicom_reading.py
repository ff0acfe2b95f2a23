"""Reading an uploaded DICOM series: files, a folder of them, or a ZIP; and refusing what is not one volume.

GDCM silently leaves out files it cannot parse, zero-fills missing pixel bytes, and ITK silently averages
over missing slices, so all three are checked here: a mask on such a grid would not match the client's
series. A ZIP is never extracted by member name: each plain file streams into a generated name under a
temp dir, through the same safe ZIP reading as model archives (`server.archives`), with limits on member
count and unpacked bytes.
"""

from __future__ import annotations

import math
import os
import re
import stat
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.filereader import read_file_meta_info

from aiaa_core.volumes import UnreadableImage, dicom_series, read_dicom_series, read_header

from .archives import ENCRYPTED, copy_member, open_zip
from .errors import BadRequest, PayloadTooLarge
from .image_headers import Ledger, charge, check_geometry, check_voxels, unreadable
from .image_names import SEND_INSTEAD, upload_basename

_ZIP_SLACK_BYTES = 256 * 1024 * 1024  # DICOM headers, overlays, odd extra files on top of the pixels

# Largest deviation of a slice from an evenly spaced stack, relative to the slice spacing, that is still
# read as one volume: real scanners jitter by ~1e-3 mm; a missing slice deviates by a whole spacing.
_SLICE_SPACING_TOLERANCE = 0.01

_DICOM_TAG_SERIES_DESCRIPTION = "0008|103e"
_DICOM_TAG_POSITION = "0020|0032"
_DICOM_TAG_SERIES_NUMBER = "0020|0011"
_UNCOMPRESSED_SYNTAXES = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2")


def has_dicom_signature(path: Path) -> bool:
    """DICOM Part 10 files carry `DICM` after a 128-byte preamble; PACS exports often lack `.dcm`."""
    with open(path, "rb") as f:
        f.seek(128)
        return f.read(4) == b"DICM"


def read_dicom_dir(
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
    listed: set[str] = set()
    series: list[tuple[list[str], sitk.ImageFileReader]] = []
    for files in dicom_series(directory):
        listed.update(Path(f).name for f in files)
        if not files:
            continue
        try:
            info = read_header(files[0], "GDCMImageIO")
        except UnreadableImage:  # DICOM without pixels (DICOMDIR, reports)
            continue
        series.append((files, info))

    for n, client_name in enumerate(names):
        generated = directory / f"{n:05d}.dcm"
        if generated.name not in listed and (all_dicom or has_dicom_signature(generated)):
            where = "" if source == f"'{client_name}'" else f" in {source}"
            raise BadRequest(
                f"Could not read '{client_name}'{where} as DICOM: the file is damaged or truncated."
            )
    if not series:
        shown = ": " + ", ".join(names[:5]) + (", ..." if len(names) > 5 else "") if names else ""
        found = f"{len(names)} file{'s' if len(names) != 1 else ''}{shown}"
        raise BadRequest(f"No DICOM images found in {source} ({found}). " + SEND_INSTEAD)
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
    check_voxels(size, max_voxels)
    _check_dicom_pixels_present(files, info, source)
    check_geometry(info, source, "DICOM")
    charge(ledger, info, size)

    try:
        image, reader = read_dicom_series(files)
    except UnreadableImage as exc:
        raise unreadable(exc, source, "DICOM", "the files are damaged or incomplete") from None
    if _slice_deviation(reader, image, len(files)) > _SLICE_SPACING_TOLERANCE * image.GetSpacing()[2]:
        raise BadRequest(
            f"The DICOM series in {source} has missing or unevenly spaced slices, so it is not one regular "
            "volume. Send the complete series."
        )
    return image


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


def read_dicom_zip(path: Path, *, max_voxels: int, max_files: int, ledger: Ledger | None) -> sitk.Image:
    """Unpack a ZIP of DICOM files safely and read the single series inside.

    Members are never extracted by name (no path traversal): each regular file is streamed into a
    generated name under a fresh temp dir, counting the real unpacked bytes against the limit.
    """
    name = path.name
    archive = open_zip(path, name)
    max_bytes = _zip_byte_limit(max_voxels)
    with archive, tempfile.TemporaryDirectory(prefix="aiaa-zip-") as tmp:
        infos = archive.infolist()
        if len(infos) > max_files:
            raise PayloadTooLarge(
                f"The ZIP archive '{name}' holds {len(infos)} entries; the limit is {max_files} files."
            )
        members = [info for info in infos if _is_regular_member(info)]
        if not members:
            raise BadRequest(f"The ZIP archive '{name}' contains no files. " + SEND_INSTEAD)
        declared = sum(info.file_size for info in members)
        if declared > max_bytes:
            raise PayloadTooLarge(_zip_too_large(name, declared, max_bytes))

        unpacked = 0

        def count(nbytes: int) -> None:
            nonlocal unpacked
            unpacked += nbytes
            if unpacked > max_bytes:
                raise PayloadTooLarge(_zip_too_large(name, unpacked, max_bytes))

        def refusal(reason: str) -> BadRequest:
            if reason == ENCRYPTED:
                return BadRequest(f"The ZIP archive '{name}' is password-protected; send it without a password.")
            return BadRequest(
                f"The ZIP archive '{name}' uses a compression method that cannot be read here; "
                "re-create it with standard (deflate) compression."
            )

        for n, info in enumerate(members):
            with open(Path(tmp) / f"{n:05d}.dcm", "wb") as dst:
                copy_member(archive, info, dst, name, count, refusal)
        shown = [upload_basename(info.filename) for info in members]
        return read_dicom_dir(
            Path(tmp), f"'{name}'", shown, max_voxels=max_voxels, all_dicom=False, ledger=ledger
        )


def _zip_too_large(name: str, size: int, limit: int) -> str:
    return (
        f"The ZIP archive '{name}' unpacks to more than {limit // 1_000_000} MB "
        f"({size // 1_000_000} MB or more); send a smaller image."
    )
