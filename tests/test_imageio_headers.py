"""Hostile headers: files that name other files, lie about their size, or carry a sheared geometry."""

from __future__ import annotations

import zlib

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from image_fixtures import (
    make_image,
    write,
)

from aiaa_core.volumes import to_array
from server.errors import BadRequest
from server.image_reading import read_image


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
