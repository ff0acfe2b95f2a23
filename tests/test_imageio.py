"""Tests for server.imageio: reading uploads, geometry, masks, DICOM and hostile input."""

from __future__ import annotations

import gzip
import shutil
import stat
import zipfile
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from server import imageio
from server.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from server.imageio import (
    MASK_EXTENSIONS,
    encode_mask,
    image_extension,
    ras_affine,
    read_image,
    require_3d,
    to_array,
    upload_basename,
    write_dicom_series,
)

DATA = Path(__file__).parents[1] / ".." / "shared" / "data"
TOTALSEG = DATA / "totalseg"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="shared test data (../shared/data) is absent")

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


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def dicom_zip(files: list[Path], path: Path, folder: str = "export/SERIES1/") -> Path:
    """Zip a series the way PACS exports look: a folder inside, member names without extension."""
    return make_zip(path, {f"{folder}IM{n:04d}": f.read_bytes() for n, f in enumerate(files)})


# ------------------------------------------------------------------------------------------ names


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("C:\\Users\\dr\\ct.nii.gz", "ct.nii.gz"),
        ("/home/x/ct.nrrd", "ct.nrrd"),
        ("ct.nii.gz", "ct.nii.gz"),
        ("C:/mixed\\folders/scan.mha", "scan.mha"),
        ("C:ct.nii", "ct.nii"),
    ],
)
def test_upload_basename_strips_client_folders(filename, expected):
    assert upload_basename(filename) == expected


@pytest.mark.parametrize("filename", ["", "C:\\Users\\dr\\", "..", "/tmp/.", "a/\x00"])
def test_upload_basename_is_a_safe_file_name(filename):
    assert upload_basename(filename) == "upload"


def test_upload_basename_shortens_long_names_keeping_the_extension():
    name = upload_basename("x" * 300 + ".nii.gz")
    assert name.endswith(".nii.gz") and len(name.encode()) <= 200


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        ("ct.nii.gz", ".nii.gz"),
        ("CT.NII.GZ", ".nii.gz"),
        ("C:\\data\\CT.Nii", ".nii"),
        ("scan.nrrd", ".nrrd"),
        ("IM0001.DCM", ".dcm"),
        ("series.zip", ".zip"),
        ("notes.txt", ".txt"),
        ("archive.tar.gz", ".gz"),
        ("IM0001", ""),
        ("/data.d/IM0001", ""),
    ],
)
def test_image_extension(filename, expected):
    assert image_extension(filename) == expected


# ------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("extension", FORMATS)
def test_read_image_round_trip(tmp_path, extension, direction):
    image = make_image(direction)
    back = read_image([write(image, tmp_path / f"ct{extension}")])
    assert back.GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(to_array(back), to_array(image))
    assert_same_grid(back, image, **tolerance(direction, extension))


def test_read_image_uncompressed_nrrd_and_mha(tmp_path):
    image = make_image("RAS", dtype=np.float32)
    for extension in (".nrrd", ".mha"):
        back = read_image([write(image, tmp_path / f"ct{extension}", compress=False)])
        np.testing.assert_array_equal(to_array(back), to_array(image))
        assert_same_grid(back, image)


def test_read_png_is_2d_and_refused_by_a_3d_model(tmp_path):
    picture = sitk.GetImageFromArray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) % 255)
    picture = sitk.Cast(picture, sitk.sitkUInt8)
    image = read_image([write(picture, tmp_path / "xray.png")])
    assert image.GetDimension() == 2 and image.GetSize() == (64, 64)
    np.testing.assert_array_equal(to_array(image), to_array(picture))
    with pytest.raises(BadRequest) as err:
        require_3d(image, "spleen_ct")
    assert err.value.status == 400
    assert err.value.message == "Model 'spleen_ct' needs a 3D volume; the uploaded image is 2D (64×64)."


def test_require_3d_accepts_a_volume_even_with_one_slice():
    require_3d(make_image(), "spleen_ct")
    require_3d(sitk.Image([64, 64, 1], sitk.sitkInt16), "spleen_ct")


def test_require_3d_refuses_a_colour_volume():
    rgb = sitk.Image([8, 8, 4], sitk.sitkVectorUInt8, 3)
    with pytest.raises(BadRequest, match="'spleen_ct' needs a single-channel.*3 channels"):
        require_3d(rgb, "spleen_ct")


def test_to_array_is_in_ijk_index_order():
    image = make_image("oblique")
    array = to_array(image)
    assert array.shape == SIZE
    assert array.dtype == np.int16
    for index in [(0, 0, 0), (19, 0, 0), (0, 15, 0), (0, 0, 11), (7, 3, 9)]:
        assert array[index] == image.GetPixel(index)


def test_to_array_keeps_channels_last_for_vector_images():
    rgb = sitk.Compose([sitk.Image([5, 4, 3], sitk.sitkUInt8) + c for c in (1, 2, 3)])
    rgb[4, 3, 2] = (7, 8, 9)
    array = to_array(rgb)
    assert array.shape == (5, 4, 3, 3)
    assert tuple(array[4, 3, 2]) == (7, 8, 9)
    assert tuple(array[0, 0, 0]) == (1, 2, 3)


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_ras_affine_matches_nibabel_and_sitk_physical_points(direction):
    image = make_image(direction)
    affine = ras_affine(image)
    assert affine.shape == (4, 4) and affine.dtype == np.float64
    nifti = nib.Nifti1Image.from_bytes(gzip.decompress(encode_mask(np.zeros(SIZE, np.uint8), image)))
    np.testing.assert_allclose(affine, nifti.affine, rtol=0, atol=1e-5)
    for index in [(0, 0, 0), (19, 15, 11), (3, 7, 5)]:
        lps = np.array(image.TransformIndexToPhysicalPoint(index))
        ras = affine @ np.array([*index, 1.0])
        np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-9)


def test_ras_affine_of_a_2d_image_has_a_unit_third_axis():
    picture = sitk.Image([6, 4], sitk.sitkUInt8)
    picture.SetSpacing((0.5, 0.25))
    picture.SetOrigin((10.0, -3.0))
    affine = ras_affine(picture)
    np.testing.assert_allclose(affine @ [2, 3, 0, 1], [-11.0, 3.0 - 0.75, 0.0, 1.0])


# ------------------------------------------------------------------------------------------- masks


def _read_bytes(data: bytes, path: Path) -> sitk.Image:
    path.write_bytes(data)
    return sitk.ReadImage(str(path))


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("extension", MASK_EXTENSIONS)
def test_encode_mask_keeps_the_reference_grid(tmp_path, extension, direction):
    reference = make_image(direction)
    mask = (to_array(reference) > 500).astype(np.uint8) * 3
    back = _read_bytes(encode_mask(mask, reference, extension), tmp_path / f"mask{extension}")
    assert back.GetPixelID() == sitk.sitkUInt8
    np.testing.assert_array_equal(to_array(back), mask)
    assert_same_grid(back, reference, **tolerance(direction, extension))


@pytest.mark.parametrize(
    ("dtype", "pixel_id"),
    [
        ("uint8", sitk.sitkUInt8),
        ("int16", sitk.sitkInt16),
        ("uint16", sitk.sitkUInt16),
        ("int32", sitk.sitkInt32),
    ],
)
@pytest.mark.parametrize("extension", MASK_EXTENSIONS)
def test_encode_mask_writes_the_requested_dtype(tmp_path, extension, dtype, pixel_id):
    reference = make_image("LAS")
    mask = np.zeros(SIZE, dtype=np.int64)
    mask[2:9, 3:12, 1:5] = 117
    mask[0, 0, 0] = 1
    back = _read_bytes(encode_mask(mask, reference, extension, dtype=dtype), tmp_path / f"m{extension}")
    assert back.GetPixelID() == pixel_id
    np.testing.assert_array_equal(to_array(back), mask)


def test_encode_mask_nifti_gz_is_fast_gzip_and_read_by_nibabel():
    reference = make_image("RAS")
    mask = (to_array(reference) > 0).astype(np.uint8)
    data = encode_mask(mask, reference, ".nii.gz")
    assert data[:2] == b"\x1f\x8b" and data[8] == 4  # gzip XFL=4: written at the fastest level
    nifti = nib.Nifti1Image.from_bytes(gzip.decompress(data))
    assert nifti.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(nifti.dataobj), mask)  # nibabel's array is [i, j, k] too


def test_encode_mask_uncompressed_variants(tmp_path):
    reference = make_image()
    mask = (to_array(reference) > 0).astype(np.uint8)
    data = encode_mask(mask, reference, ".nii.gz", compress=False)
    np.testing.assert_array_equal(to_array(_read_bytes(data, tmp_path / "m.nii.gz")), mask)
    np.testing.assert_array_equal(np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(data)).dataobj), mask)
    nrrd = encode_mask(mask, reference, ".nrrd", compress=False)
    assert b"encoding: raw" in nrrd[:1000]
    np.testing.assert_array_equal(to_array(_read_bytes(nrrd, tmp_path / "m.nrrd")), mask)
    assert b"encoding: gzip" in encode_mask(mask, reference, ".nrrd")[:1000]


def test_encode_mask_accepts_bool_and_extension_without_dot(tmp_path):
    reference = make_image()
    mask = to_array(reference) > 0
    back = _read_bytes(encode_mask(mask, reference, "NRRD"), tmp_path / "m.nrrd")
    np.testing.assert_array_equal(to_array(back), mask.astype(np.uint8))


def test_encode_mask_on_a_2d_reference(tmp_path):
    picture = sitk.Image([6, 4], sitk.sitkUInt8)
    picture.SetSpacing((0.5, 0.25))
    mask = np.zeros((6, 4), np.uint8)
    mask[5, 1] = 1
    back = _read_bytes(encode_mask(mask, picture, ".nrrd"), tmp_path / "m.nrrd")
    assert back.GetSize() == (6, 4) and back[5, 1] == 1 and back.GetSpacing() == (0.5, 0.25)


def test_encode_mask_refuses_unknown_extension():
    with pytest.raises(BadRequest) as err:
        encode_mask(np.zeros(SIZE, np.uint8), make_image(), ".png")
    assert "'.png'" in err.value.message and ".nii.gz, .nii, .nrrd, .mha" in err.value.message


@pytest.mark.parametrize("dtype", ["float32", "bool", "banana", "complex64"])
def test_encode_mask_refuses_non_integer_dtype(dtype):
    with pytest.raises(BadRequest, match=f"'{dtype}'.*integer"):
        encode_mask(np.zeros(SIZE, np.uint8), make_image(), dtype=dtype)


def test_encode_mask_refuses_labels_that_do_not_fit():
    mask = np.zeros(SIZE, np.int32)
    mask[1, 2, 3] = 300
    with pytest.raises(BadRequest, match="300.*uint8"):
        encode_mask(mask, make_image(), dtype="uint8")


def test_encode_mask_shape_mismatch_is_a_bug():
    with pytest.raises(ValueError, match="shape"):
        encode_mask(np.zeros(SIZE[::-1], np.uint8), make_image())  # numpy [k, j, i] order by mistake
    with pytest.raises(ValueError, match="whole numbers"):
        encode_mask(np.full(SIZE, 0.5), make_image())


# ------------------------------------------------------------------------------------------- DICOM


@pytest.mark.parametrize("direction", ["LPS", "RAS", "oblique"])
def test_dicom_series_round_trip(tmp_path, direction):
    image = make_image(direction)
    files = write_dicom_series(image, tmp_path / "dicom")
    assert len(files) == SIZE[2]
    back = read_image(files[::-1])  # upload order does not matter: GDCM sorts by position
    np.testing.assert_array_equal(to_array(back), to_array(image))
    assert_same_grid(back, image, atol=1e-4, dir_atol=1e-6)

    zipped = read_image([dicom_zip(files, tmp_path / "series.zip")])
    np.testing.assert_array_equal(to_array(zipped), to_array(image))
    assert_same_grid(zipped, image, atol=1e-4, dir_atol=1e-6)


def test_dicom_series_headers(tmp_path):
    files = write_dicom_series(make_image("oblique"), tmp_path, series_description="liver phantom")
    headers = [pydicom.dcmread(f) for f in files]
    assert [h.InstanceNumber for h in headers] == list(range(1, SIZE[2] + 1))
    for uid in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        assert len({h.get(uid) for h in headers}) == 1
    assert len({h.SOPInstanceUID for h in headers}) == SIZE[2]
    first = headers[0]
    assert first.Modality == "CT" and first.SeriesDescription == "liver phantom"
    assert (first.Rows, first.Columns) == (SIZE[1], SIZE[0])
    assert [float(v) for v in first.PixelSpacing] == [SPACING[1], SPACING[0]]
    assert float(first.SliceThickness) == SPACING[2]
    assert first.BitsAllocated == 16 and first.PixelRepresentation == 1
    assert float(first.RescaleSlope) == 1 and float(first.RescaleIntercept) == 0
    np.testing.assert_allclose([float(v) for v in first.ImagePositionPatient], ORIGIN)
    assert len({tuple(h.ImagePositionPatient) for h in headers}) == SIZE[2]


def test_dicom_left_handed_grid_is_stored_with_k_reversed(tmp_path):
    image = make_image("LAS")
    files = write_dicom_series(image, tmp_path / "dicom")
    for back in (read_image(files), read_image([dicom_zip(files, tmp_path / "las.zip")])):
        assert back.GetSize() == image.GetSize()
        assert np.linalg.det(np.reshape(back.GetDirection(), (3, 3))) > 0
        np.testing.assert_allclose(back.GetSpacing(), SPACING, atol=1e-4)
        np.testing.assert_array_equal(to_array(back), to_array(image)[:, :, ::-1])
        last = SIZE[2] - 1
        for i, j, k in [(0, 0, 0), (19, 15, 11), (4, 9, 2), (0, 15, 7)]:
            np.testing.assert_allclose(
                back.TransformIndexToPhysicalPoint((i, j, last - k)),
                image.TransformIndexToPhysicalPoint((i, j, k)),
                atol=1e-4,
            )


def test_dicom_values_beyond_int16_use_the_intercept(tmp_path):
    image = make_image() + 40000  # 39000..41999 does not fit int16
    image = sitk.Cast(image, sitk.sitkInt32)
    back = read_image(write_dicom_series(image, tmp_path))
    np.testing.assert_array_equal(to_array(back), to_array(image))


def test_single_dicom_file_is_a_one_slice_series(tmp_path):
    files = write_dicom_series(make_image("RAS"), tmp_path)
    back = read_image([files[3]])
    assert back.GetDimension() == 3 and back.GetSize() == (SIZE[0], SIZE[1], 1)
    np.testing.assert_allclose(back.GetOrigin(), make_image("RAS").TransformIndexToPhysicalPoint((0, 0, 3)))


def test_dicom_files_without_extension_are_recognised(tmp_path):
    files = write_dicom_series(make_image(), tmp_path / "dicom")
    renamed = [f.rename(tmp_path / f"IM{n}") for n, f in enumerate(files)]
    assert read_image(renamed).GetSize() == SIZE
    assert read_image([renamed[0]]).GetSize() == (SIZE[0], SIZE[1], 1)


def test_zip_ignores_member_paths_and_non_regular_members(tmp_path):
    files = write_dicom_series(make_image(), tmp_path / "dicom")
    zip_path = tmp_path / "hostile.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        for n, f in enumerate(files):
            archive.writestr(f"../../escape_{n}.dcm" if n % 2 else f"/abs/escape_{n}", f.read_bytes())
        link = zipfile.ZipInfo("passwd_link")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
        archive.writestr("__MACOSX/._IM0001", b"apple double")
    image = read_image([zip_path])
    assert image.GetSize() == SIZE
    for folder in (tmp_path, tmp_path.parent, Path.cwd(), Path.cwd().parent, Path.cwd().parent.parent):
        assert not list(folder.glob("escape_*"))
    assert not Path("/abs").exists()


# ------------------------------------------------------------------------------------------ errors


def test_garbage_nifti_gz(tmp_path):
    path = tmp_path / "x.nii.gz"
    path.write_bytes(np.random.default_rng(1).bytes(5000))
    with pytest.raises(BadRequest) as err:
        read_image([path])
    assert err.value.status == 400
    assert err.value.message == "Could not read 'x.nii.gz' as NIfTI: the file is damaged or truncated."


@pytest.mark.parametrize(
    ("extension", "name"), [(".nii.gz", "NIfTI"), (".nii", "NIfTI"), (".nrrd", "NRRD"), (".mha", "MetaImage")]
)
def test_truncated_file(tmp_path, extension, name):
    # ITK itself would zero-fill a truncated NIfTI silently; the reader must notice.
    data = write(make_image(), tmp_path / f"full{extension}").read_bytes()
    path = tmp_path / f"ct{extension}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadRequest, match=f"'ct{extension}' as {name}: the file is damaged or truncated"):
        read_image([path])


def test_corrupt_middle_of_nifti_gz(tmp_path):
    data = bytearray(write(make_image(), tmp_path / "full.nii.gz").read_bytes())
    data[len(data) // 2 : len(data) // 2 + 50] = bytes(50)
    path = tmp_path / "ct.nii.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(BadRequest, match="'ct.nii.gz' as NIfTI"):
        read_image([path])


def test_nifti_gz_that_is_not_gzipped_still_reads(tmp_path):
    image = make_image("RAS")
    path = tmp_path / "plain.nii.gz"
    path.write_bytes(write(image, tmp_path / "x.nii").read_bytes())
    np.testing.assert_array_equal(to_array(read_image([path])), to_array(image))


def test_empty_file(tmp_path):
    path = tmp_path / "x.nii.gz"
    path.touch()
    with pytest.raises(BadRequest) as err:
        read_image([path])
    assert err.value.message == "The uploaded file 'x.nii.gz' is empty."


@pytest.mark.parametrize("name", ["notes.txt", "scan"])
def test_unsupported_type_is_415(tmp_path, name):
    path = tmp_path / name
    path.write_text("not an image")
    with pytest.raises(UnsupportedMediaType) as err:
        read_image([path])
    assert err.value.status == 415
    assert "NIfTI (.nii, .nii.gz)" in err.value.message and ".zip" in err.value.message
    assert ("'.txt'" if name.endswith(".txt") else "'scan'") in err.value.message


def test_too_many_voxels(tmp_path):
    path = write(make_image(), tmp_path / "ct.nrrd")
    with pytest.raises(PayloadTooLarge) as err:
        read_image([path], max_voxels=1000)
    assert err.value.status == 413
    assert err.value.message == "The image is too large: 20×16×12 voxels; the limit is 1000 voxels."
    assert read_image([path], max_voxels=20 * 16 * 12).GetSize() == SIZE


def test_too_many_voxels_is_refused_from_the_header_before_decoding(tmp_path):
    # A header promising 3.7 G voxels followed by almost no data: decoding would fail as "damaged"
    # (or exhaust memory); the size check must come first.
    header = nib.Nifti1Header()
    header.set_data_shape((2048, 2048, 900))
    header.set_data_dtype(np.int16)
    header.set_sform(np.diag([1.0, 1.0, 1.0, 1.0]), code=1)
    raw = header.binaryblock + b"\0" * 4 + b"\1" * 64
    for path in (tmp_path / "big.nii", tmp_path / "big.nii.gz"):
        path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
        with pytest.raises(PayloadTooLarge, match="2048×2048×900 voxels; the limit is 536870912 voxels"):
            read_image([path])


def test_too_many_voxels_in_a_dicom_zip(tmp_path):
    zip_path = dicom_zip(write_dicom_series(make_image(), tmp_path / "d"), tmp_path / "s.zip")
    with pytest.raises(PayloadTooLarge, match="20×16×12 voxels; the limit is 100 voxels"):
        read_image([zip_path], max_voxels=100)


def test_zip_without_dicom(tmp_path):
    path = make_zip(tmp_path / "study.zip", {"notes.txt": b"hello", "sub/ct.nii.gz": b"xx"})
    with pytest.raises(BadRequest) as err:
        read_image([path])
    assert "No DICOM images found in 'study.zip'" in err.value.message
    assert "notes.txt" in err.value.message and "ct.nii.gz" in err.value.message


def test_zip_with_only_folders_and_links(tmp_path):
    path = tmp_path / "empty.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("folder/", b"")
        link = zipfile.ZipInfo("evil")
        link.create_system = 3
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    with pytest.raises(BadRequest, match="'empty.zip' contains no files"):
        read_image([path])


def test_corrupt_zip(tmp_path):
    garbage = tmp_path / "bad.zip"
    garbage.write_bytes(b"PK\x03\x04" + np.random.default_rng(2).bytes(3000))
    with pytest.raises(BadRequest, match="Could not read 'bad.zip' as a ZIP archive"):
        read_image([garbage])

    data = dicom_zip(write_dicom_series(make_image(), tmp_path / "d"), tmp_path / "full.zip").read_bytes()
    truncated = tmp_path / "cut.zip"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadRequest, match="'cut.zip'"):
        read_image([truncated])


def test_zip_member_with_bad_crc(tmp_path):
    path = make_zip(tmp_path / "crc.zip", {"IM1": b"A" * 5000})
    data = bytearray(path.read_bytes())
    start = data.index(b"IM1") + 3  # the (deflated) data follows the local header's name
    data[start + 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BadRequest, match="Could not read 'crc.zip' as a ZIP archive"):
        read_image([path])


def test_zip_with_too_many_members(tmp_path):
    path = make_zip(tmp_path / "many.zip", {f"IM{n}": b"x" for n in range(6)})
    with pytest.raises(PayloadTooLarge) as err:
        read_image([path], max_files=5)
    assert err.value.status == 413 and "'many.zip'" in err.value.message and "6" in err.value.message


def test_zip_unpacking_to_too_many_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(imageio, "_ZIP_SLACK_BYTES", 0)
    path = make_zip(tmp_path / "bomb.zip", {"IM1": bytes(10_000_000)})  # 10 MB of zeros, ~10 kB zipped
    assert path.stat().st_size < 100_000
    with pytest.raises(PayloadTooLarge, match="'bomb.zip' unpacks to more than"):
        read_image([path], max_voxels=1_000_000)


def test_zip_with_two_series(tmp_path):
    first = write_dicom_series(make_image(), tmp_path / "a", series_description="AX 2.5mm")
    second = write_dicom_series(make_image(seed=1), tmp_path / "b", series_description="Scout")
    members = {f"a/{n}": f.read_bytes() for n, f in enumerate(first)}
    members |= {f"b/{n}": f.read_bytes() for n, f in enumerate(second[:3])}
    with pytest.raises(BadRequest) as err:
        read_image([make_zip(tmp_path / "two.zip", members)])
    message = err.value.message
    assert "2 DICOM series in 'two.zip'" in message
    assert "'AX 2.5mm' (12 images)" in message and "'Scout' (3 images)" in message


def test_several_files_must_all_be_dicom(tmp_path):
    files = write_dicom_series(make_image(), tmp_path / "d")
    other = write(make_image(), tmp_path / "ct.nii.gz")
    with pytest.raises(BadRequest, match="'ct.nii.gz' is not a DICOM file"):
        read_image([*files, other])


def test_several_uploads_over_the_file_limit(tmp_path):
    files = write_dicom_series(make_image(), tmp_path / "d")
    with pytest.raises(PayloadTooLarge, match="12; the limit is 5"):
        read_image(files, max_files=5)


def test_damaged_dicom_file(tmp_path):
    # GDCM would silently leave the broken file out and ITK stack the rest with a gap.
    files = write_dicom_series(make_image(), tmp_path / "d")
    data = files[4].read_bytes()
    files[4].write_bytes(data[: len(data) - 200])
    with pytest.raises(
        BadRequest, match="'slice_0004.dcm' in the 12 uploaded DICOM files as DICOM: the file is dam"
    ):
        read_image(files)
    with pytest.raises(BadRequest, match="'IM0004' in 'cut.zip' as DICOM: the file is damaged"):
        read_image([dicom_zip(files, tmp_path / "cut.zip")])


def test_garbage_dcm_files(tmp_path):
    single = tmp_path / "IM1.dcm"
    single.write_bytes(b"not dicom at all" * 50)
    with pytest.raises(BadRequest, match="Could not read 'IM1.dcm' as DICOM: the file is damaged"):
        read_image([single])
    files = write_dicom_series(make_image(), tmp_path / "d")
    files[2].write_bytes(b"\0" * 1000)
    with pytest.raises(BadRequest, match="'slice_0002.dcm' in the 12 uploaded DICOM files as DICOM"):
        read_image(files)


def test_dicom_series_with_a_missing_slice(tmp_path):
    files = write_dicom_series(make_image(), tmp_path / "d")
    with pytest.raises(BadRequest, match="missing or unevenly spaced slices"):
        read_image(files[:5] + files[6:])


def test_dicom_series_with_position_jitter_still_reads(tmp_path):
    files = write_dicom_series(make_image(), tmp_path / "d")
    ds = pydicom.dcmread(files[5])
    ds.ImagePositionPatient[2] = float(ds.ImagePositionPatient[2]) + 0.002  # scanner rounding, 0.1 %
    ds.save_as(files[5])
    image = read_image(files)
    assert image.GetSize() == SIZE
    np.testing.assert_allclose(image.GetSpacing(), SPACING, atol=1e-3)


def test_metaimage_with_external_data_file_is_refused(tmp_path):
    # ITK would read any file the header names, e.g. another patient's upload or /etc/passwd.
    write(make_image(), tmp_path / "secret.mhd", compress=False)
    header = (tmp_path / "secret.mhd").read_text()
    header = header.replace("ElementDataFile = secret.raw", f"ElementDataFile = {tmp_path / 'secret.raw'}")
    path = tmp_path / "evil.mha"
    path.write_text(header)
    with pytest.raises(BadRequest, match="'evil.mha' refers to a separate data file"):
        read_image([path])


def test_nrrd_with_detached_data_file_is_refused(tmp_path):
    write(make_image(), tmp_path / "secret.nhdr", compress=False)
    header = (tmp_path / "secret.nhdr").read_text()
    assert "data file: " in header
    path = tmp_path / "evil.nrrd"
    path.write_text(header.replace("data file: ", f"data file: {tmp_path}/"))
    with pytest.raises(BadRequest, match="'evil.nrrd' refers to a separate data file"):
        read_image([path])


def test_nifti_with_sheared_orientation(tmp_path):
    header = nib.Nifti1Header()
    header.set_data_shape((4, 4, 4))
    header.set_data_dtype(np.uint8)
    header.set_sform(np.array([[1, 0.8, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]), code=1)
    header.set_qform(None, code=0)
    path = tmp_path / "shear.nii"
    path.write_bytes(header.binaryblock + b"\0" * 4 + bytes(64))
    with pytest.raises(BadRequest, match="'shear.nii'"):
        read_image([path])


def _with_line_ending(data: bytes, header_end: bytes, eol: bytes) -> bytes:
    """The file with the header's "\\n" line endings (up to `header_end`) replaced by `eol`."""
    cut = data.index(header_end) + len(header_end)
    return data[:cut].replace(b"\n", eol) + data[cut:]


@pytest.mark.parametrize("eol", [b"\r\n", b"\r"])
def test_nrrd_with_any_line_ending_still_reads(tmp_path, eol):
    # ITK ends a NRRD header line at \n, \r\n or a bare \r; the checks split lines the same way
    image = make_image()
    data = write(image, tmp_path / "ct.nrrd", compress=False).read_bytes()
    data = _with_line_ending(data.replace(b"\nencoding:", b"\nnote:=Slicer key\nencoding:"), b"\n\n", eol)
    path = tmp_path / "crlf.nrrd"
    path.write_bytes(data)
    read = read_image([path])
    np.testing.assert_array_equal(to_array(read), to_array(image))


def test_metaimage_with_crlf_header_still_reads(tmp_path):
    image = make_image()
    data = write(image, tmp_path / "ct.mha", compress=False).read_bytes()
    path = tmp_path / "crlf.mha"
    path.write_bytes(_with_line_ending(data, b"ElementDataFile = LOCAL\n", b"\r\n"))
    np.testing.assert_array_equal(to_array(read_image([path])), to_array(image))


@pytest.mark.parametrize(
    "line",
    [b"data file: {p}", b"datafile: {p}", b"Data File: {p}", b"data file: LIST\n{p}", b"data file: {p}%d 1 2 1"],
)
@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"])
def test_nrrd_data_file_in_any_spelling_and_line_ending_is_refused(tmp_path, line, eol):
    raw = tmp_path / "secret.raw"
    raw.write_bytes(bytes(range(64)))
    header = b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 4 4 4\nencoding: raw\n" + line.replace(b"{p}", bytes(raw))
    path = tmp_path / "evil.nrrd"
    path.write_bytes((header + b"\n").replace(b"\n", eol))
    with pytest.raises(BadRequest, match="'evil.nrrd' refers to a separate data file"):
        read_image([path])


def test_nrrd_with_an_unknown_header_field_is_refused(tmp_path):
    path = tmp_path / "odd.nrrd"
    path.write_bytes(b"NRRD0004\ntype: uint8\ndimension: 3\nsizes: 4 4 4\nencoding: raw\nfrobnicate: 1\n\n" + bytes(64))
    with pytest.raises(BadRequest, match="not a NRRD field"):
        read_image([path])


@pytest.mark.parametrize(
    "tail",
    [
        b"ElementDataFile: {p}\n",
        b"ElementDataFile = LIST\n{p}\n",
        b"elementdatafile = LOCAL\nElementDataFile = {p}\n",
        b"ElementDataFile = LOCAL\r{p}\n",
    ],
)
def test_metaimage_data_file_in_any_form_is_refused(tmp_path, tail):
    raw = tmp_path / "secret.raw"
    raw.write_bytes(bytes(range(64)))
    header = b"ObjectType = Image\nNDims = 3\nDimSize = 4 4 4\nElementType = MET_UCHAR\n"
    path = tmp_path / "evil.mha"
    path.write_bytes(header + tail.replace(b"{p}", bytes(raw)))
    with pytest.raises(BadRequest, match="'evil.mha' refers to a separate data file"):
        read_image([path])


@pytest.mark.parametrize("declared", [b"3000000000", b"9" * 5000])
def test_metaimage_declaring_more_compressed_bytes_than_it_holds_is_refused(tmp_path, declared):
    # MetaIO allocates the declared CompressedDataSize before reading: only bytes that were uploaded count
    header = b"ObjectType = Image\nNDims = 3\nDimSize = 8 8 8\nElementType = MET_UCHAR\nCompressedData = True\n"
    path = tmp_path / "declared.mha"
    header += b"CompressedDataSize = " + declared + b"\nElementDataFile = LOCAL\n"
    path.write_bytes(header + zlib.compress(bytes(512)))
    with pytest.raises(BadRequest, match="damaged or truncated"):
        read_image([path])


@pytest.mark.parametrize("magic", [b"ni1\x00", b"\x00\x00\x00\x00"])
def test_nifti_pair_or_analyze_header_is_refused(tmp_path, magic):
    header = nib.Nifti1Header()
    header.set_data_shape((4, 4, 4))
    header.set_data_dtype(np.uint8)
    block = bytearray(header.binaryblock)
    block[344:348] = magic
    path = tmp_path / "pair.nii"
    path.write_bytes(bytes(block) + bytes(68))
    with pytest.raises(BadRequest, match="refers to a separate data file"):
        read_image([path])


@pytest.mark.parametrize("extension", [".nrrd", ".mha"])
def test_sheared_orientation_is_refused_in_every_format(tmp_path, extension):
    image = sitk.Image([4, 4, 4], sitk.sitkUInt8)
    image.SetDirection((1, 0, 0, 0.8, 1, 0, 0, 0, 1))
    path = write(image, tmp_path / f"shear{extension}")
    with pytest.raises(BadRequest, match="sheared or degenerate"):
        read_image([path])


def test_dicom_claiming_more_pixels_than_it_holds_is_refused(tmp_path):
    files = write_dicom_series(make_image()[:, :, :1], tmp_path / "dicom")
    ds = pydicom.dcmread(files[0])
    ds.Rows, ds.Columns = 20000, 20000  # 800 MB claimed, 480 bytes of pixels
    ds.save_as(files[0])
    with pytest.raises(BadRequest, match="fewer pixel bytes than its header claims"):
        read_image(files)


def test_no_file_at_all():
    with pytest.raises(BadRequest, match="No image file"):
        read_image([])


# -------------------------------------------------------------------------------------- real data


@needs_data
def test_real_nifti_ct():
    image = read_image([TOTALSEG / "example_ct.nii.gz"])
    assert image.GetSize() == (122, 101, 112)
    np.testing.assert_allclose(image.GetSpacing(), (3.0, 3.0, 3.0))
    np.testing.assert_allclose(ras_affine(image), nib.load(TOTALSEG / "example_ct.nii.gz").affine, atol=1e-4)


@needs_data
def test_real_nifti_truncated(tmp_path):
    data = (TOTALSEG / "example_ct.nii.gz").read_bytes()
    path = tmp_path / "example_ct.nii.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadRequest, match="'example_ct.nii.gz' as NIfTI: the file is damaged or truncated"):
        read_image([path])


@needs_data
def test_real_dicom_series_matches_the_segmentation_grid(tmp_path):
    files = sorted((TOTALSEG / "example_ct_dicom").iterdir())
    assert len(files) == 20
    image = read_image(files)
    assert image.GetSize() == (512, 512, 20)
    np.testing.assert_allclose(image.GetSpacing(), (0.9765625, 0.9765625, 2.0), atol=1e-6)

    # The segmentation (dcm2niix-style, LAS) lists the same voxels with j and k in the other order;
    # brought to one orientation, the grids are identical.
    seg = sitk.ReadImage(str(TOTALSEG / "example_seg_dicom.nii.gz"))
    assert seg.GetSize() == image.GetSize()
    np.testing.assert_allclose(seg.GetSpacing(), image.GetSpacing(), atol=1e-6)
    ours, theirs = sitk.DICOMOrient(image, "LPS"), sitk.DICOMOrient(seg, "LPS")
    assert ours.GetSize() == theirs.GetSize()
    np.testing.assert_allclose(ours.GetOrigin(), theirs.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(ours.GetDirection(), theirs.GetDirection(), atol=1e-6)

    zip_path = tmp_path / "ct.zip"
    with zipfile.ZipFile(zip_path, "w") as archive:
        for f in files:
            archive.write(f, f"DICOM/{f.name}")
    zipped = read_image([zip_path])
    np.testing.assert_array_equal(to_array(zipped), to_array(image))
    assert_same_grid(zipped, image)


@needs_data
def test_real_single_dicom_file(tmp_path):
    # an upload lands in another folder than the series; one file is a one-slice series
    source = sorted((TOTALSEG / "example_ct_dicom").iterdir())[0]
    copy = shutil.copy(source, tmp_path / "IM0001.dcm")
    image = read_image([Path(copy)])
    assert image.GetSize() == (512, 512, 1)
