"""Reading DICOM uploads: series, single files, ZIPs (hostile ones too), and series that are not one volume."""

from __future__ import annotations

import shutil
import stat
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from image_fixtures import (
    ORIGIN,
    SIZE,
    SPACING,
    assert_same_grid,
    dicom_zip,
    make_image,
    make_zip,
    write,
    write_dicom_series,
)

from aiaa_core.volumes import to_array
from server import archives, dicom_reading
from server.errors import BadRequest, PayloadTooLarge
from server.image_reading import read_image

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
    monkeypatch.setattr(dicom_reading, "_ZIP_SLACK_BYTES", 0)
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


def test_dicom_claiming_more_pixels_than_it_holds_is_refused(tmp_path):
    files = write_dicom_series(make_image()[:, :, :1], tmp_path / "dicom")
    ds = pydicom.dcmread(files[0])
    ds.Rows, ds.Columns = 20000, 20000  # 800 MB claimed, 480 bytes of pixels
    ds.save_as(files[0])
    with pytest.raises(BadRequest, match="fewer pixel bytes than its header claims"):
        read_image(files)


# -------------------------------------------------------------------------------------- real data


def test_real_dicom_series_matches_the_segmentation_grid(shared_data, tmp_path):
    totalseg = shared_data / "totalseg"
    files = sorted((totalseg / "example_ct_dicom").iterdir())
    assert len(files) == 20
    image = read_image(files)
    assert image.GetSize() == (512, 512, 20)
    np.testing.assert_allclose(image.GetSpacing(), (0.9765625, 0.9765625, 2.0), atol=1e-6)

    # The segmentation (dcm2niix-style, LAS) lists the same voxels with j and k in the other order;
    # brought to one orientation, the grids are identical.
    seg = sitk.ReadImage(str(totalseg / "example_seg_dicom.nii.gz"))
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


def test_real_single_dicom_file(shared_data, tmp_path):
    totalseg = shared_data / "totalseg"
    # an upload lands in another folder than the series; one file is a one-slice series
    source = sorted((totalseg / "example_ct_dicom").iterdir())[0]
    copy = shutil.copy(source, tmp_path / "IM0001.dcm")
    image = read_image([Path(copy)])
    assert image.GetSize() == (512, 512, 1)


def _unreadable_member_zips(tmp_path: Path) -> dict[str, Path]:
    """A ZIP whose member is encrypted, and one whose member uses a compression method zipfile lacks."""
    zips = {}
    # (local header offset, central directory offset) of the flags (bit 0: encrypted) and of the method
    for what, name, offsets, value in (
        ("password-protected", "locked.zip", (6, 8), 0x1),
        ("compression method", "odd.zip", (8, 10), 97),
    ):
        path = tmp_path / name
        with zipfile.ZipFile(path, "w") as archive:  # stored: flags and method 0
            archive.writestr("IM1", b"x" * 100)
        data = bytearray(path.read_bytes())
        for signature, offset in zip((b"PK\x03\x04", b"PK\x01\x02"), offsets, strict=True):
            at = data.index(signature) + offset
            data[at : at + 2] = value.to_bytes(2, "little")
        path.write_bytes(bytes(data))
        zips[what] = path
    return zips


def test_zip_members_that_cannot_be_read_are_refused_in_each_caller_s_words(tmp_path):
    # One ZIP reader (server.archives) serves DICOM uploads and model installs; each says it its own way.
    for what, path in _unreadable_member_zips(tmp_path).items():
        with pytest.raises(BadRequest) as err:
            read_image([path])
        assert err.value.message.startswith(f"The ZIP archive '{path.name}' ") and what in err.value.message
        dest = tmp_path / f"model_{path.stem}"
        dest.mkdir()
        with pytest.raises(BadRequest) as err:
            archives.unpack_zip(path, dest, path.name, archives.ArchiveLimits())
        assert err.value.message.startswith(f"Refused '{path.name}': member 'IM1' ") and what in err.value.message
        assert "nothing was installed" in err.value.message
