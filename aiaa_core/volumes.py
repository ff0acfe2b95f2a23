"""Images on disk → SimpleITK → MONAI: how the app's trainers and the server decode a volume and hand it on.

`read_image_file` reads a TRUSTED file or DICOM folder (training data, benchmarks) with no checks. The
server reads untrusted uploads in `server.image_reading`: it checks the header first, then decodes with
the same `read_header` / `decode` / `read_dicom_series` here, so pixels and geometry come out the same
whichever side reads them. A file ITK cannot read raises `UnreadableImage` (a `ValueError`); the server
turns it into a 400 in one place (`server.image_headers.unreadable`).

Arrays handed to models are in `[i, j, k]` order, the SimpleITK index order of the file (`to_array`), and
`ras_affine` gives the matching nibabel/MONAI affine; `to_metatensor` is the hand-off to MONAI.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from monai.data import MetaTensor


class UnreadableImage(ValueError):
    """ITK could not read an image; the message is ITK's own text (for logs, not for a person)."""

    @property
    def sheared(self) -> bool:
        """ITK refused the orientation matrix (not orthonormal) rather than the bytes."""
        return "orthonormal" in str(self)


# ------------------------------------------------------------------------------------------- reading


def read_header(path: Path, image_io: str = "") -> sitk.ImageFileReader:
    """A reader of `path` with its header read (size, spacing, pixel type) and no pixel decoded yet.

    `image_io` names the ITK ImageIO that must read the file (e.g. "NiftiImageIO"); empty lets ITK pick.
    """
    reader = sitk.ImageFileReader()
    if image_io:
        reader.SetImageIO(image_io)
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise UnreadableImage(str(exc)) from None
    return reader


def decode(reader: sitk.ImageFileReader, path: Path | None = None) -> sitk.Image:
    """The image whose header `reader` read, decoded from `path` when given (e.g. a checked copy)."""
    if path is not None:
        reader.SetFileName(str(path))
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise UnreadableImage(str(exc)) from None


def dicom_series(folder: Path) -> list[list[str]]:
    """The DICOM image series in `folder`, each as its files in slice order (GDCM groups and sorts them).

    Files GDCM cannot parse are left out silently; a series may come back empty.
    """
    try:
        series_ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError:
        return []
    found = []
    for series_id in series_ids:
        try:
            found.append(list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_id)))
        except RuntimeError:
            continue
    return found


def read_dicom_series(files: Sequence[str]) -> tuple[sitk.Image, sitk.ImageSeriesReader]:
    """One DICOM series as a 3D image, and the reader holding each slice's tags (positions, descriptions)."""
    reader = sitk.ImageSeriesReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileNames(list(files))
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise UnreadableImage(str(exc)) from None
    if image.GetDimension() == 2:  # defensive: GDCM reports single-frame files as 3D
        image = sitk.JoinSeries(image)
    return image, reader


def read_image_file(path: Path) -> sitk.Image:
    """A trusted image: one file ITK reads (NIfTI, NRRD, MetaImage…) or a folder holding one DICOM series.

    No limits and no header checks: for the project's own data only. Uploads go through the server's
    reader, which checks them first and decodes them with the functions above.
    """
    path = Path(path)
    if path.is_dir():
        series = [files for files in dicom_series(path) if files]
        if len(series) != 1:
            raise UnreadableImage(f"{path} holds {len(series)} DICOM series; one is needed")
        return read_dicom_series(series[0])[0]
    return decode(read_header(path))


# ------------------------------------------------------------------------------------- model hand-off


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

    The server and the trainers hand this to the app's tasks, so the pipeline runs the same as when stock
    MONAI Label loads the file from a path. The tensor is a view of SimpleITK's buffer copy in its own
    (Fortran) order: a C-ordered copy of a 512×512×100 CT costs about a second on 2 cores.
    """
    return MetaTensor(torch.from_numpy(to_array(image))[None], affine=torch.from_numpy(ras_affine(image)))


GRID_TOLERANCE = 1e-3  # relative: spacing, origin and direction must agree to this (float32 NIfTI headers)


def same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    """Do two images lie on one voxel grid (size, spacing, origin, direction; to float32 header precision)?"""
    if a.GetSize() != b.GetSize():
        return False
    scale = max(1.0, *map(abs, a.GetSpacing()), *map(abs, a.GetOrigin()))
    return all(
        np.allclose(x, y, rtol=GRID_TOLERANCE, atol=GRID_TOLERANCE * s)
        for x, y, s in (
            (a.GetSpacing(), b.GetSpacing(), 1.0),
            (a.GetOrigin(), b.GetOrigin(), scale),
            (a.GetDirection(), b.GetDirection(), 1.0),
        )
    )
