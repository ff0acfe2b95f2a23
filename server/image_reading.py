"""Reading an uploaded image: every kind of bad input becomes a clear 4xx, never a SimpleITK exception and a 500.

Everything a client uploads passes through `read_image`: it picks the reader from the client's file name
(`server.image_names`), checks the header before any pixel data is decoded (`server.image_headers`),
reads DICOM series and ZIPs of them (`server.dicom_reading`), and decodes with the same SimpleITK calls
the trainers use for trusted files (`aiaa_core.volumes`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import SimpleITK as sitk

from aiaa_core.volumes import UnreadableImage, decode, read_header

from .dicom_reading import has_dicom_signature, read_dicom_dir, read_dicom_zip
from .errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from .image_headers import Ledger, charge, check_geometry, check_single_file, check_voxels, complete_nifti, unreadable
from .image_names import SEND_INSTEAD, VOLUME_FORMATS, image_extension, unsupported_message

DEFAULT_MAX_VOXELS: int = 1024 * 1024 * 1024 // 2
"""Largest image accepted (voxels, all axes multiplied); `read_image` takes a per-call value."""

DEFAULT_MAX_FILES: int = 5000
"""Most files in one DICOM upload or ZIP archive: bounds work and temp-dir size on hostile input."""


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
        raise BadRequest("No image file was uploaded. " + SEND_INSTEAD)
    if len(paths) > max_files:
        raise PayloadTooLarge(f"Too many files: {len(paths)}; the limit is {max_files} files per image.")
    for path in paths:
        if path.stat().st_size == 0:
            raise BadRequest(f"The uploaded file '{path.name}' is empty.")

    if len(paths) == 1:
        path = paths[0]
        ext = image_extension(path.name)
        if ext == ".zip":
            return read_dicom_zip(path, max_voxels=max_voxels, max_files=max_files, ledger=ledger)
        if ext in VOLUME_FORMATS:
            return _read_volume(path, ext, max_voxels=max_voxels, ledger=ledger)
        if ext == ".dcm" or has_dicom_signature(path):
            with tempfile.TemporaryDirectory(prefix="aiaa-dicom-") as tmp:
                _link_or_copy(path, Path(tmp) / "00000.dcm")
                return read_dicom_dir(
                    Path(tmp), f"'{path.name}'", [path.name], max_voxels=max_voxels, all_dicom=True, ledger=ledger
                )
        raise UnsupportedMediaType(unsupported_message(ext, path.name))

    for path in paths:
        if image_extension(path.name) != ".dcm" and not has_dicom_signature(path):
            raise BadRequest(
                f"{len(paths)} files were uploaded, but '{path.name}' is not a DICOM file. Send one "
                "volume file, or a DICOM series (.dcm files or a .zip of them)."
            )
    images = [p for p in paths if p.name.upper() != "DICOMDIR"]  # the index of a DICOM disc, no pixels
    with tempfile.TemporaryDirectory(prefix="aiaa-dicom-") as tmp:
        for n, path in enumerate(images):
            _link_or_copy(path, Path(tmp) / f"{n:05d}.dcm")
        source = f"the {len(paths)} uploaded DICOM files"
        return read_dicom_dir(
            Path(tmp), source, [p.name for p in images], max_voxels=max_voxels, all_dicom=True, ledger=ledger
        )


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link when possible (uploads and temp dirs usually share a file system), else copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _read_volume(path: Path, ext: str, *, max_voxels: int, ledger: Ledger | None) -> sitk.Image:
    """One volume file: header checks, size and geometry from the header, then the pixels."""
    format_name, image_io = VOLUME_FORMATS[ext]
    name = path.name
    check_single_file(path, name, format_name)
    try:
        reader = read_header(path, image_io)
    except UnreadableImage as exc:
        raise unreadable(exc, f"'{name}'", format_name) from None
    components = max(1, reader.GetNumberOfComponents())  # values, not pixels, are what is allocated
    check_voxels([*reader.GetSize(), components] if components > 1 else reader.GetSize(), max_voxels)
    check_geometry(reader, f"'{name}'", format_name)
    charge(ledger, reader)

    with tempfile.TemporaryDirectory(prefix="aiaa-read-") as tmp:
        complete = complete_nifti(path, Path(tmp)) if format_name == "NIfTI" else None
        try:
            return decode(reader, complete)
        except UnreadableImage as exc:
            raise unreadable(exc, f"'{name}'", format_name) from None


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
