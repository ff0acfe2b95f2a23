"""Images for tests: a small volume in four orientations, files and ZIPs of it, and a DICOM writer.

Only tests use the DICOM writer (the server reads DICOM, it never writes it), so it lives beside them.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

SIZE = (20, 16, 12)  # i, j, k
SPACING = (0.75, 1.5, 2.5)  # float32-exact, so NIfTI keeps them exactly
ORIGIN = (-100.5, 20.25, 7.0)


def _rotation(axis: tuple[float, float, float], degrees: float) -> np.ndarray:
    a = np.asarray(axis, dtype=np.float64)
    a /= np.linalg.norm(a)
    t = np.radians(degrees)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


DIRECTIONS = {
    "LPS": np.eye(3),
    "RAS": np.diag([-1.0, -1.0, 1.0]),
    "LAS": np.diag([1.0, -1.0, 1.0]),
    "oblique": _rotation((1, 2, 3), 30),
}
FORMATS = (".nii.gz", ".nii", ".nrrd", ".mha")


def make_image(direction: str = "LPS", dtype=np.int16, seed: int = 0) -> sitk.Image:
    rng = np.random.default_rng(seed)
    array = rng.integers(-1000, 2000, size=SIZE[::-1]).astype(dtype)  # numpy order [k, j, i]
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTIONS[direction].ravel().tolist())
    return image


def write(image: sitk.Image, path: Path, compress: bool = True) -> Path:
    sitk.WriteImage(image, str(path), useCompression=compress)
    return path


def assert_same_grid(actual: sitk.Image, expected: sitk.Image, *, atol: float = 0.0, dir_atol: float = 0.0):
    assert actual.GetSize() == expected.GetSize()
    np.testing.assert_allclose(actual.GetSpacing(), expected.GetSpacing(), rtol=0, atol=atol)
    np.testing.assert_allclose(actual.GetOrigin(), expected.GetOrigin(), rtol=0, atol=atol)
    np.testing.assert_allclose(actual.GetDirection(), expected.GetDirection(), rtol=0, atol=dir_atol)


def tolerance(direction: str, extension: str) -> dict[str, float]:
    """Axis-aligned grids come back exactly. Oblique ones: NIfTI stores the direction as float32
    quaternions (1e-6); NRRD's spacing is the norm of a direction vector (rounding, 1e-12)."""
    if direction == "oblique":
        return {"atol": 1e-12, "dir_atol": 1e-6 if ".nii" in extension else 1e-12}
    return {}


def shear(degrees: float) -> np.ndarray:
    """A 4×4 shear: slices shifted in y along k, as a tilted gantry acquires them."""
    m = np.eye(4)
    m[1, 2] = np.tan(np.radians(degrees))
    return m


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def dicom_zip(files: list[Path], path: Path, folder: str = "export/SERIES1/") -> Path:
    """Zip a series the way PACS exports look: a folder inside, member names without extension."""
    return make_zip(path, {f"{folder}IM{n:04d}": f.read_bytes() for n, f in enumerate(files)})


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

    Builds realistic DICOM inputs from any volume: int16 pixels with
    RescaleSlope/Intercept, per-slice ImagePositionPatient, ImageOrientationPatient, PixelSpacing,
    SliceThickness, shared Study/Series/FrameOfReference UIDs, InstanceNumber, Modality CT, so that
    the server's `read_image(files)` returns the same grid and values (integer images whose value range spans at most
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
