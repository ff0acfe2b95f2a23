"""Fast mask replies: NIfTI from a cached header plus the voxels, gzip with the zero runs spliced in from a
cache; ITK, nibabel and Python's gzip must read back exactly the mask, on exactly the grid."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from aiaa_core.volumes import to_array
from server.mask_writing import _geometry, _nifti_header, _write, encode_mask


def reference(size, direction=None) -> sitk.Image:
    image = sitk.Image(list(size), sitk.sitkInt16)
    image.SetSpacing([0.75 + 0.5 * i for i in range(len(size))])
    image.SetOrigin([-120.5 + 3 * i for i in range(len(size))])
    if direction:
        image.SetDirection(direction)
    return image


@pytest.mark.parametrize(
    ("size", "direction", "pixel"),
    [
        ((300, 280, 60), (1, 0, 0, 0, -1, 0, 0, 0, 1), sitk.sitkUInt8),
        ((61, 53, 17), (0, 1, 0, -1, 0, 0, 0, 0, 1), sitk.sitkInt32),
        ((40, 30), None, sitk.sitkUInt16),
    ],
)
def test_cached_header_is_itks_header_for_the_full_image(tmp_path, size, direction, pixel):
    image = sitk.Image(list(size), pixel)
    image.CopyInformation(reference(size, direction))
    _write(image, tmp_path / "full.nii", compress=False)
    written = (tmp_path / "full.nii").read_bytes()
    voxels = image.GetNumberOfPixels() * image.GetSizeOfPixelComponent()
    assert _nifti_header(_geometry(image), pixel) == written[: len(written) - voxels]


@pytest.mark.parametrize("compress", [True, False])
def test_sparse_mask_round_trips_through_itk_nibabel_and_gzip(tmp_path, compress):
    grid = reference((512, 480, 24), (1, 0, 0, 0, -1, 0, 0, 0, 1))  # > 1 MiB zero runs around the labels
    mask = np.zeros(grid.GetSize(), dtype=np.uint8, order="F")
    mask[200:260, 100:180, 5:9] = 1
    mask[10, 470, 20] = 2  # a lone voxel far from the rest
    data = encode_mask(mask, grid, ".nii.gz", compress=compress)
    assert len(data) < 200_000 if compress else len(data) > mask.size
    path = tmp_path / "mask.nii.gz"
    path.write_bytes(data)
    back = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(to_array(back), mask)
    assert back.GetSpacing() == pytest.approx(grid.GetSpacing()) and back.GetDirection() == grid.GetDirection()
    np.testing.assert_array_equal(np.asarray(nib.load(str(path)).dataobj), mask)
    np.testing.assert_array_equal(np.frombuffer(gzip.decompress(data)[352:], np.uint8), mask.ravel(order="F"))


def test_c_ordered_empty_and_full_masks(tmp_path):
    grid = reference((64, 48, 40))
    for n, mask in enumerate([np.zeros(grid.GetSize(), np.uint8), np.ones(grid.GetSize(), np.uint8)]):
        for extension in (".nii.gz", ".nii"):
            path = tmp_path / f"m{n}{extension}"
            path.write_bytes(encode_mask(mask, grid, extension))
            np.testing.assert_array_equal(to_array(sitk.ReadImage(str(path))), mask)
