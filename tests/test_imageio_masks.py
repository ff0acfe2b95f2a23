"""Writing masks on the input's grid: every format and dtype, and what a client may not ask for."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from image_fixtures import (
    DIRECTIONS,
    SIZE,
    assert_same_grid,
    make_image,
    tolerance,
)

from aiaa_core.volumes import to_array
from server.errors import BadRequest
from server.mask_writing import MASK_EXTENSIONS, encode_mask

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


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_encode_mask_writes_a_png_for_a_2d_reference(tmp_path, dtype):
    picture = sitk.Image([6, 4], sitk.sitkUInt8)
    picture.SetSpacing((0.5, 0.25))
    mask = np.zeros((6, 4), np.uint8)
    mask[5, 1] = 3
    data = encode_mask(mask, picture, ".png", dtype)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    back = _read_bytes(data, tmp_path / "m.png")
    assert back.GetSize() == (6, 4) and back[5, 1] == 3
    assert back.GetPixelID() == {"uint8": sitk.sitkUInt8, "uint16": sitk.sitkUInt16}[dtype]
    np.testing.assert_allclose(back.GetSpacing(), (0.5, 0.25), rtol=1e-3)  # PNG keeps pixels per metre


def test_encode_mask_png_takes_only_png_sample_types_and_values_that_fit():
    picture = sitk.Image([6, 4], sitk.sitkUInt8)
    with pytest.raises(BadRequest, match="'int16' for a PNG mask"):
        encode_mask(np.zeros((6, 4), np.uint8), picture, ".png", "int16")
    with pytest.raises(BadRequest, match="from 0 to 300, which do not fit in uint8"):
        encode_mask(np.eye(6, 4, dtype=np.uint16) * 300, picture, ".png")


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
