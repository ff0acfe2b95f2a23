"""Reading uploaded volume files: names, round trips, the hand-off arrays, and broken or oversized files."""

from __future__ import annotations

import gzip
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from image_fixtures import (
    DIRECTIONS,
    FORMATS,
    SIZE,
    assert_same_grid,
    make_image,
    tolerance,
    write,
    write_dicom_series,
)

from aiaa_core.volumes import UnreadableImage, ras_affine, read_image_file, to_array
from server.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from server.image_names import image_extension, upload_basename
from server.image_reading import read_image, require_3d
from server.mask_writing import encode_mask

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


def test_no_file_at_all():
    with pytest.raises(BadRequest, match="No image file"):
        read_image([])


# -------------------------------------------------------------------------------------- real data


def test_real_nifti_ct(shared_data):
    totalseg = shared_data / "totalseg"
    image = read_image([totalseg / "example_ct.nii.gz"])
    assert image.GetSize() == (122, 101, 112)
    np.testing.assert_allclose(image.GetSpacing(), (3.0, 3.0, 3.0))
    np.testing.assert_allclose(ras_affine(image), nib.load(totalseg / "example_ct.nii.gz").affine, atol=1e-4)


def test_real_nifti_truncated(shared_data, tmp_path):
    totalseg = shared_data / "totalseg"
    data = (totalseg / "example_ct.nii.gz").read_bytes()
    path = tmp_path / "example_ct.nii.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadRequest, match="'example_ct.nii.gz' as NIfTI: the file is damaged or truncated"):
        read_image([path])


# ----------------------------------------------------------------------- trusted files (aiaa_core.volumes)


@pytest.mark.parametrize("extension", FORMATS)
def test_trusted_reader_decodes_as_the_upload_reader(tmp_path, extension):
    path = write(make_image("oblique"), tmp_path / f"ct{extension}")
    trusted, uploaded = read_image_file(path), read_image([path])
    np.testing.assert_array_equal(to_array(trusted), to_array(uploaded))
    assert_same_grid(trusted, uploaded)


def test_trusted_reader_reads_a_dicom_folder_as_the_upload_reader(tmp_path):
    files = write_dicom_series(make_image("RAS"), tmp_path / "series")
    trusted, uploaded = read_image_file(tmp_path / "series"), read_image(files)
    np.testing.assert_array_equal(to_array(trusted), to_array(uploaded))
    assert_same_grid(trusted, uploaded)


def test_trusted_reader_signals_unreadable_input_with_a_value_error(tmp_path):
    path = tmp_path / "x.nii.gz"
    path.write_bytes(np.random.default_rng(1).bytes(5000))
    with pytest.raises(UnreadableImage) as err:
        read_image_file(path)
    assert isinstance(err.value, ValueError) and not err.value.sheared

    (tmp_path / "two").mkdir()
    for series, seed in (("a", 0), ("b", 1)):
        for f in write_dicom_series(make_image(seed=seed), tmp_path / series):
            f.rename(tmp_path / "two" / f"{series}{f.name}")
    with pytest.raises(UnreadableImage, match="2 DICOM series"):
        read_image_file(tmp_path / "two")


def test_the_core_imports_neither_flask_nor_the_server():
    code = (
        "import sys, aiaa_core.volumes; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('flask', 'server')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"

