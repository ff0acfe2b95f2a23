"""The /v1/mask2polygon and /v1/fixpolygon endpoints: replies, grids, bad input, axis order, 2D PNG slices."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from polygon_helpers import (
    DIRECTION,
    GOOD_2D,
    ORIGIN,
    SIZE,
    SPACING,
    SQUARE,
    client,
    disc,
    drag,
    post,
    read_multipart,
    volume_bytes,
)
from requests_toolbelt.multipart.decoder import MultipartDecoder

from aiaa_core.volumes import to_array
from server.polygons import fix_polygon, polygons_to_mask, rasterise, slice_polygons

__all__ = ["client"]  # the fixture


def test_mask2polygon_replies_plain_json_per_slice(client, tmp_path):
    mask = np.zeros(SIZE, np.uint8)
    mask[4:16, 5:8, 1] = 1  # longer along i (4..15) than along j (5..7)
    mask[:, :, 3] = disc(SIZE[:2], (8, 6), 3) | disc(SIZE[:2], (18, 11), 2)
    reply = post(client, "mask2polygon", {"more_points": 1}, volume_bytes(mask, tmp_path))
    assert reply.status_code == 200, reply.get_data(as_text=True)
    assert reply.mimetype == "application/json"
    slices = reply.get_json()
    assert len(slices) == SIZE[2] and slices[0] == slices[2] == slices[4] == []
    (rectangle,) = np.asarray(slices[1], dtype=float)
    assert (rectangle[:, 0].min(), rectangle[:, 0].max()) == (4.5, 7.5)  # [j, i]: coordinate 0 is j
    assert (rectangle[:, 1].min(), rectangle[:, 1].max()) == (3.5, 15.5)
    assert len(slices[3]) == 2
    back = polygons_to_mask([[np.asarray(p, float) for p in s] for s in slices], SIZE)
    assert np.array_equal(back, mask)
    sparse = post(client, "mask2polygon", {"more_points": 3}, volume_bytes(mask, tmp_path)).get_json()
    assert len(sparse[1][0]) < len(slices[1][0])


def assert_input_grid(mask: sitk.Image) -> None:
    assert mask.GetSize() == SIZE
    np.testing.assert_allclose(mask.GetSpacing(), SPACING)
    np.testing.assert_allclose(mask.GetOrigin(), ORIGIN)
    np.testing.assert_allclose(mask.GetDirection(), DIRECTION)


def test_fixpolygon_2d_replies_multipart_with_the_mask_on_the_input_grid(client, tmp_path):
    rectangle = np.zeros(SIZE[:2], bool)  # [i, j]
    rectangle[4:16, 5:8] = True
    poly = [p.tolist() for p in slice_polygons(rectangle.T)]  # [j, i] vertices
    vertex = int(np.argmax(np.asarray(poly[0])[:, 1]))  # a vertex on the far i edge
    params = drag(poly, [0, 4], vertex=vertex, neighbours=2, slice_index=3)
    image = np.random.default_rng(0).normal(size=SIZE).astype(np.float32)
    result, filename, mask = read_multipart(post(client, "fixpolygon", params, volume_bytes(image, tmp_path)), tmp_path)
    assert filename == "result.nii.gz"
    assert_input_grid(mask)
    expected = fix_polygon([np.asarray(p, float) for p in poly], 0, vertex, (0, 4), 2)
    assert len(result["poly"]) == 1
    np.testing.assert_allclose(result["poly"][0], expected[0])
    np.testing.assert_allclose(np.asarray(result["poly"][0])[vertex], np.asarray(poly[0])[vertex] + [0, 4])
    mask_ijk = to_array(mask)
    assert set(np.unique(mask_ijk)) == {0, 1}
    assert np.array_equal(np.flatnonzero(mask_ijk.any(axis=(0, 1))), [3])
    assert np.array_equal(mask_ijk[:, :, 3].T.astype(bool), rasterise(expected, SIZE[1::-1]))
    assert mask_ijk[:, :, 3].sum() > rectangle.sum()  # dragged outwards
    assert mask_ijk[16:20, 5:8, 3].any() and not mask_ijk[:4, :, 3].any()  # along +i, the far i edge


def test_fixpolygon_3d_spreads_to_neighbouring_slices(client, tmp_path):
    cylinder = np.repeat(disc(SIZE[:2], (12, 8), 5)[:, :, None], SIZE[2], axis=2).astype(np.uint8)
    poly = post(client, "mask2polygon", {}, volume_bytes(cylinder, tmp_path)).get_json()
    params = {
        "prev_poly": poly,
        "vertexOffset": [0, 3],
        "dimension": 3,
        "sliceIndex": 2,
        "polygonIndex": 0,
        "vertexIndex": 0,
        "propagate_neighbor": 1,
        "propagate_neighbor_3d": 1,
        "result_extension": ".nrrd",
    }
    reply = post(client, "fixpolygon", params, volume_bytes(np.zeros(SIZE, np.int16), tmp_path))
    result, filename, mask = read_multipart(reply, tmp_path)
    assert filename == "result.nrrd"
    assert_input_grid(mask)
    assert len(result["poly"]) == SIZE[2]
    change = [np.abs(np.asarray(result["poly"][k]) - np.asarray(poly[k])).max() for k in range(SIZE[2])]
    np.testing.assert_allclose(change, [0, 1.5, 3, 1.5, 0])
    mask_ijk = to_array(mask)
    assert np.array_equal(mask_ijk, polygons_to_mask([[np.asarray(p) for p in s] for s in result["poly"]], SIZE))
    differs = [not np.array_equal(mask_ijk[:, :, k], cylinder[:, :, k]) for k in range(SIZE[2])]
    assert differs == [False, True, True, True, False]


BAD_REQUESTS = {
    "more_points zero": ("mask2polygon", {"more_points": 0}, "3d", ["more_points", "≥ 1"]),
    "more_points fraction": ("mask2polygon", {"more_points": 1.5}, "3d", ["more_points", "whole number"]),
    "more_points text": ("mask2polygon", {"more_points": "many"}, "3d", ["more_points", "whole number"]),
    "mask 2D": ("mask2polygon", {}, "2d", ["3D volume", "2D"]),
    "no mask": ("mask2polygon", {}, None, ["No image", "datapoint"]),
    "params not JSON": ("fixpolygon", "{poly", "3d", ["params", "JSON"]),
    "poly missing": ("fixpolygon", {**GOOD_2D, "poly": None}, "3d", ["'poly' is missing", "mask2polygon"]),
    "poly not a list": ("fixpolygon", {**GOOD_2D, "poly": 7}, "3d", ["'poly'", "list of polygons"]),
    "poly bad vertex": ("fixpolygon", {**GOOD_2D, "poly": [[[1, "x"], [2, 3]]]}, "3d", ["Polygon 0", "[row, column]"]),
    "poly 3D for 2D": ("fixpolygon", {**GOOD_2D, "poly": [SQUARE, SQUARE]}, "3d", ["Polygon 0", "[row, column]"]),
    "polygon_index": ("fixpolygon", {**GOOD_2D, "polygon_index": 1}, "3d", ["'polygon_index' 1", "out of range"]),
    "vertex_index": ("fixpolygon", {**GOOD_2D, "vertex_index": 4}, "3d", ["'vertex_index' 4", "0..3"]),
    "negative index": ("fixpolygon", {**GOOD_2D, "vertex_index": -1}, "3d", ["vertex_index", "≥ 0"]),
    "index missing": ("fixpolygon", {**GOOD_2D, "polygon_index": None}, "3d", ["'polygon_index' is missing"]),
    "offset one number": ("fixpolygon", {**GOOD_2D, "vertex_offset": [1]}, "3d", ["vertex_offset", "two numbers"]),
    "offset text": ("fixpolygon", {**GOOD_2D, "vertex_offset": ["a", "b"]}, "3d", ["vertex_offset", "two numbers"]),
    "slice_index 2D": ("fixpolygon", {**GOOD_2D, "slice_index": 5}, "3d", ["'slice_index' 5", "0..4"]),
    "dimension 4": ("fixpolygon", {**GOOD_2D, "dimension": 4}, "3d", ["'dimension'", "2", "3"]),
    "3D on a 2D image": (
        "fixpolygon",
        {**GOOD_2D, "dimension": 3, "poly": [SQUARE], "slice_index": 0},
        "2d",
        ["dimension 3", "3D volume", "2D"],
    ),
    "slice_index 3D": (
        "fixpolygon",
        {**GOOD_2D, "dimension": 3, "poly": [SQUARE], "slice_index": 1},
        "3d",
        ["'slice_index' 1", "'poly' has 1 slices"],
    ),
    "too many slices": (
        "fixpolygon",
        {**GOOD_2D, "dimension": 3, "poly": [SQUARE] * 6, "slice_index": 0},
        "3d",
        ["6 slices", "only 5"],
    ),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_is_a_400_with_a_message(client, tmp_path, case):
    op, params, upload, fragments = BAD_REQUESTS[case]
    if isinstance(params, dict):
        params = {key: value for key, value in params.items() if value is not None}
    data = None
    if upload == "3d":
        data = volume_bytes(np.zeros(SIZE, np.uint8), tmp_path)
    elif upload == "2d":
        data = volume_bytes(np.zeros(SIZE[:2], np.uint8), tmp_path)
    reply = post(client, op, params, data)
    assert reply.status_code == 400, reply.get_data(as_text=True)
    body = reply.get_json()
    assert body["success"] is False and body["error"]["type"] == "BadRequest"
    message = body["error"]["message"]
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_unknown_session_is_a_440(client):
    reply = client.post("/v1/fixpolygon?session_id=nope", data={"params": json.dumps(GOOD_2D)})
    assert reply.status_code == 440 and "nope" in reply.get_json()["error"]["message"]


def test_fixpolygon_on_a_2d_image_and_double_encoded_params(client, tmp_path):
    params = {**GOOD_2D, "poly": json.dumps(SQUARE), "vertex_offset": "[0, 0]"}
    reply = post(client, "fixpolygon", params, volume_bytes(np.zeros((9, 8)), tmp_path))
    result, _, mask = read_multipart(reply, tmp_path)
    assert result["poly"] == SQUARE
    assert mask.GetSize() == (9, 8)
    expected = np.zeros((9, 8), np.uint8)
    expected[3:7, 3:7] = 1
    assert np.array_equal(to_array(mask), expected)


# ------------------------------------------------------------- axis order, 3D round trip, 2D in PNG


def test_3d_round_trip_mask_polygons_fixpolygon_zero_offset_gives_the_mask_back(client, tmp_path):
    mask = np.zeros(SIZE, np.uint8)  # [i, j, k]; blobs longer along i than j, one touching the border
    mask[2:20, 3:6, 0] = 1
    mask[:, :, 1] = disc(SIZE[:2], (7, 8), 4) | disc(SIZE[:2], (19, 5), 3)
    mask[0:9, 12:16, 1] = 1
    mask[5:22, 1:4, 3] = 1
    slices = post(client, "mask2polygon", {}, volume_bytes(mask, tmp_path)).get_json()
    rows_k0 = np.concatenate([np.asarray(p)[:, 0] for p in slices[0]])
    assert (rows_k0.min(), rows_k0.max()) == (2.5, 5.5)  # coordinate 0 spans j (3..5), not i (2..19)
    params = drag(slices, [0, 0], neighbours=3, dimension=3, slice_index=1, propagate_neighbor_3d=2)
    result, filename, fixed = read_multipart(post(client, "fixpolygon", params, volume_bytes(mask, tmp_path)), tmp_path)
    assert filename == "result.nii.gz"
    assert_input_grid(fixed)
    assert result["poly"] == slices
    assert np.array_equal(to_array(fixed), mask)


def png_bytes(array_ji: np.ndarray, tmp_path: Path) -> bytes:
    path = tmp_path / "slice.png"
    sitk.WriteImage(sitk.GetImageFromArray(array_ji.astype(np.uint8)), str(path))
    return path.read_bytes()


def read_png(data: bytes, tmp_path: Path) -> sitk.Image:
    """Read as ITK's PNG reader does (what MITK saves the reply as and opens)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    path = tmp_path / "reply.png"
    path.write_bytes(data)
    reader = sitk.ImageFileReader()
    reader.SetImageIO("PNGImageIO")
    reader.SetFileName(str(path))
    return reader.Execute()


BAR = [[[1.5, 2.5], [1.5, 20.5], [5.5, 20.5], [5.5, 2.5]]]  # rows (j) 2..5, columns (i) 3..20


def png_reply(reply) -> tuple[dict, str, bytes]:
    assert reply.status_code == 200, reply.get_data(as_text=True)
    params_part, file_part = MultipartDecoder(reply.data, reply.headers["Content-Type"]).parts
    filename = file_part.headers[b"Content-Disposition"].decode().split('filename="')[1].rstrip('"')
    return json.loads(params_part.content), filename, file_part.content


def test_fixpolygon_png_in_png_out_of_the_same_size(client, tmp_path):
    picture = np.random.default_rng(1).integers(0, 255, size=(23, 37))  # 23 rows (j) × 37 columns (i)
    params = drag(BAR, [0, 5], vertex=1)
    result, filename, data = png_reply(post(client, "fixpolygon", params, png_bytes(picture, tmp_path), "slice.png"))
    assert filename == "result.png"
    mask = read_png(data, tmp_path)
    assert mask.GetSize() == (37, 23) and mask.GetPixelID() == sitk.sitkUInt8
    expected = rasterise(fix_polygon([np.asarray(BAR[0])], 0, 1, (0, 5), 0), (23, 37))
    assert np.array_equal(sitk.GetArrayFromImage(mask), expected.astype(np.uint8))  # [j, i] rows and columns
    assert expected[2:6, 21:24].any() and not expected[6:].any()  # the drag went along i (columns)
    np.testing.assert_allclose(result["poly"][0][1], [1.5, 25.5])


@pytest.mark.parametrize(
    ("upload", "options", "filename", "pixel"),
    [
        ("2d nifti", {}, "result.png", sitk.sitkUInt8),
        ("png", {"result_extension": ".png", "result_dtype": "uint16"}, "result.png", sitk.sitkUInt16),
        ("png", {"result_extension": "nii.gz"}, "result.nii.gz", sitk.sitkUInt8),
        ("png", {"result_extension": ".nrrd", "result_compress": "false"}, "result.nrrd", sitk.sitkUInt8),
    ],
)
def test_2d_results_default_to_png_and_take_other_formats(client, tmp_path, upload, options, filename, pixel):
    picture = np.zeros((23, 37), np.uint8)
    data = png_bytes(picture, tmp_path) if upload == "png" else volume_bytes(picture.T, tmp_path)
    params = drag(BAR, [0, 0], **options)
    reply = post(client, "fixpolygon", params, data, "slice.png" if upload == "png" else "slice.nii.gz")
    _, name, content = png_reply(reply)
    assert name == filename
    path = tmp_path / f"back-{name}"
    path.write_bytes(content)
    mask = read_png(content, tmp_path) if name.endswith(".png") else sitk.ReadImage(str(path))
    assert mask.GetSize() == (37, 23) and mask.GetPixelID() == pixel
    assert sitk.GetArrayFromImage(mask).sum() == 4 * 18
