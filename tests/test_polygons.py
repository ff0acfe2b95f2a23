"""Polygon editing: mask ⇄ polygons geometry, vertex drags, and the /v1/mask2polygon, /v1/fixpolygon endpoints."""

from __future__ import annotations

import io
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from requests_toolbelt.multipart.decoder import MultipartDecoder
from scipy import ndimage
from skimage import draw

from aiaa_core.mask_geometry import dice
from aiaa_core.volumes import to_array
from server.app import create_app
from server.blueprints import polygons as polygons_blueprint
from server.polygons import (
    fill_polygon,
    fix_polygon,
    fix_polygon_3d,
    mask_to_polygons,
    move_vertex,
    polygons_to_mask,
    rasterise,
    slice_polygons,
)
from server.registry import ModelRegistry
from server.scheduler import Scheduler
from server.settings import Settings

SIZE = (24, 16, 5)  # i, j, k
SPACING = (0.75, 1.5, 2.5)
ORIGIN = (-10.5, 20.25, 7.0)
DIRECTION = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    i, j = np.indices(shape)
    return (i - centre[0]) ** 2 + (j - centre[1]) ** 2 <= radius**2


def round_trip(mask_ij: np.ndarray, more_points: int = 1) -> np.ndarray:
    return rasterise(slice_polygons(mask_ij, more_points), mask_ij.shape)


# ------------------------------------------------------------------------------------------ geometry


@pytest.mark.parametrize("shape", ["disc", "two blobs"])
def test_round_trip_gives_the_mask_back(shape):
    mask = disc((32, 28), (15, 12), 8)
    if shape == "two blobs":
        mask = disc((32, 28), (8, 7), 5) | disc((32, 28), (22, 19), 4)
    assert len(slice_polygons(mask)) == (1 if shape == "disc" else 2)
    assert np.array_equal(round_trip(mask), mask)  # every vertex kept: exact
    assert dice(round_trip(mask, more_points=2), mask) >= 0.95


def test_round_trip_of_random_masks_fills_only_holes():
    rng = np.random.default_rng(7)
    for _ in range(40):
        mask = rng.random((12, 10)) < rng.uniform(0.2, 0.7)
        polygons = slice_polygons(mask)
        assert len(polygons) == ndimage.label(mask)[1]  # one polygon per (4-connected) blob
        # marching squares separates blobs touching at a corner: the background is 8-connected
        assert np.array_equal(rasterise(polygons, mask.shape), ndimage.binary_fill_holes(mask, np.ones((3, 3))))


def test_fill_polygon_takes_the_voxels_skimage_takes():
    rng = np.random.default_rng(3)
    for _ in range(100):  # random, often self-intersecting polygons partly outside the grid
        polygon = rng.uniform(-4, 16, size=(int(rng.integers(3, 9)), 2))
        expected = np.zeros((11, 13), bool)
        expected[draw.polygon(polygon[:, 0], polygon[:, 1], expected.shape)] = True
        assert np.array_equal(fill_polygon(polygon, expected.shape), expected)


def test_blob_touching_the_border_and_holes():
    ring = disc((20, 20), (10, 10), 7) & ~disc((20, 20), (10, 10), 3)
    edge = np.zeros((10, 10), bool)
    edge[0:4, 6:10] = True  # touches two borders
    assert len(slice_polygons(ring)) == 1  # outer contour only: the hole is filled
    assert np.array_equal(round_trip(ring), disc((20, 20), (10, 10), 7))
    assert np.array_equal(round_trip(edge), edge)


def test_empty_slices_are_empty_lists_and_one_entry_per_slice():
    mask = np.zeros((12, 10, 4), np.uint8)
    mask[3:7, 2:5, 2] = 1
    slices = mask_to_polygons(mask)
    assert len(slices) == 4
    assert slices[0] == [] and slices[1] == [] and slices[3] == []
    assert len(slices[2]) == 1


def test_first_vertex_is_not_repeated():
    for polygon in slice_polygons(disc((20, 20), (9, 10), 6) | disc((20, 20), (2, 2), 1)):
        assert not np.array_equal(polygon[0], polygon[-1])
        assert len(np.unique(polygon, axis=0)) == len(polygon)


def test_more_points_subsamples_the_contour():
    mask = disc((40, 40), (20, 20), 12)
    every = slice_polygons(mask, 1)[0]
    third = slice_polygons(mask, 3)[0]
    assert len(third) == len(every[::3])
    assert np.array_equal(third, every[::3])
    tiny = np.zeros((5, 5), bool)
    tiny[2, 2] = True  # a 4-vertex diamond keeps at least 3 vertices
    assert len(slice_polygons(tiny, 10)[0]) >= 3


def test_vertices_are_j_i_as_the_original_server():
    mask = np.zeros((20, 10, 2), np.uint8)  # [i, j, k]
    mask[2:14, 4:7, 1] = 1  # 12 voxels along i (2..13), 3 along j (4..6)
    (polygon,) = mask_to_polygons(mask)[1]
    assert (polygon[:, 0].min(), polygon[:, 0].max()) == (3.5, 6.5)  # coordinate 0 spans the j range
    assert (polygon[:, 1].min(), polygon[:, 1].max()) == (1.5, 13.5)  # coordinate 1 spans the i range
    assert np.array_equal(polygons_to_mask(mask_to_polygons(mask), mask.shape), mask)


def test_move_vertex_moves_exactly_the_vertex_and_decays_on_neighbours():
    polygon = np.array([[0, 0], [0, 1], [0, 2], [1, 2], [2, 2], [2, 1], [2, 0], [1, 0]], float)
    offset = np.array([3.0, -6.0])
    moved = move_vertex(polygon, 1, offset, 2)
    shift = moved - polygon
    np.testing.assert_allclose(shift[1], offset)
    np.testing.assert_allclose(shift[[0, 2]], [offset * 2 / 3] * 2)
    np.testing.assert_allclose(shift[[7, 3]], [offset / 3] * 2)  # cyclic: vertex 7 neighbours vertex 0
    np.testing.assert_allclose(shift[[4, 5, 6]], 0)
    alone = move_vertex(polygon, 1, offset, 0) - polygon
    np.testing.assert_allclose(alone[1], offset)
    assert np.count_nonzero(alone.any(axis=1)) == 1


def test_fix_polygon_changes_only_the_chosen_polygon():
    first, second = np.array([[0, 0], [0, 4], [4, 4]], float), np.array([[9, 9], [9, 12], [12, 12]], float)
    fixed = fix_polygon([first, second], 1, 2, (1.0, 0.0), 0)
    assert fixed[0] is first
    np.testing.assert_allclose(fixed[1][2], [13, 12])
    np.testing.assert_allclose(fixed[1][:2], second[:2])


def test_3d_propagation_decays_over_slices_at_the_nearest_vertex():
    square = np.array([[0, 0], [0, 10], [10, 10], [10, 0]], float)
    # vertex numbering differs between slices: slice k lists the square starting k vertices later
    slices = [[np.roll(square, -k, axis=0)] for k in range(5)] + [[], [np.roll(square, -6, axis=0)]]
    offset = np.array([-3.0, 6.0])
    fixed = fix_polygon_3d(slices, 3, 0, 0, offset, neighbours=0, neighbour_slices=2)
    corner = slices[3][0][0]  # [10, 10]
    for k, weight in [(1, 1 / 3), (2, 2 / 3), (3, 1.0), (4, 2 / 3)]:
        (polygon,) = fixed[k]
        moved = np.flatnonzero((polygon != slices[k][0]).any(axis=1))
        assert len(moved) == 1 and np.array_equal(slices[k][0][moved[0]], corner)
        np.testing.assert_allclose(polygon[moved[0]], corner + weight * offset)
    assert np.array_equal(fixed[0][0], slices[0][0])  # 3 slices away: beyond the reach
    assert fixed[5] == []  # no polygon 0 on that slice: left alone
    assert np.array_equal(fixed[6][0], slices[6][0])


def test_polygons_to_mask_fills_each_slice_with_j_i_vertices():
    box = np.array([[1.5, 1.5], [1.5, 5.5], [3.5, 5.5], [3.5, 1.5]])  # rows (j) 2..3, columns (i) 2..5
    mask = polygons_to_mask([[], [box], [box + [2, 3], np.array([[0.0, 0.0]])]], (8, 7, 4))
    assert mask.dtype == np.uint8 and mask.shape == (8, 7, 4)
    assert mask[:, :, 0].sum() == 0 and mask[:, :, 3].sum() == 0
    assert np.array_equal(np.argwhere(mask[:, :, 1]).min(0), [2, 2]) and mask[:, :, 1].sum() == 8
    assert np.array_equal(np.argwhere(mask[:, :, 1]).max(0), [5, 3])  # i up to 5, j up to 3
    assert np.array_equal(np.argwhere(mask[:, :, 2]).min(0), [5, 4]) and mask[:, :, 2].sum() == 6  # i 8 clipped


# ----------------------------------------------------------------------------------------- endpoints


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("polygons")
    app = create_app(Settings(model_repo=tmp / "repo", session_dir=tmp / "sessions"), ModelRegistry(tmp / "repo", []))
    if "polygons" not in app.blueprints:  # until server/app.py registers it
        app.register_blueprint(polygons_blueprint.bp)
    yield app.test_client()
    app.extensions["aiaa.sessions"].stop()


def volume_bytes(array_ijk: np.ndarray, tmp_path: Path, name: str = "volume.nii.gz") -> bytes:
    image = sitk.GetImageFromArray(np.ascontiguousarray(array_ijk.T))
    if image.GetDimension() == 3:
        image.SetSpacing(SPACING)
        image.SetOrigin(ORIGIN)
        image.SetDirection(DIRECTION)
    path = tmp_path / name
    sitk.WriteImage(image, str(path))
    return path.read_bytes()


def post(client, op: str, params, data: bytes | None, name: str = "volume.nii.gz"):
    form = {"params": params if isinstance(params, str) else json.dumps(params)}
    if data is not None:
        form["datapoint"] = (io.BytesIO(data), name)
    return client.post(f"/v1/{op}", data=form, content_type="multipart/form-data")


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


def read_multipart(reply, tmp_path: Path) -> tuple[dict, str, sitk.Image]:
    """The params JSON (first part, no filename), the file part's name, and the decoded mask."""
    assert reply.status_code == 200, reply.get_data(as_text=True)
    assert reply.mimetype == "multipart/form-data"
    assert int(reply.headers["Content-Length"]) == len(reply.data)
    params_part, file_part = MultipartDecoder(reply.data, reply.headers["Content-Type"]).parts
    disposition = params_part.headers[b"Content-Disposition"].decode()
    assert 'name="params"' in disposition and "filename" not in disposition
    filename = file_part.headers[b"Content-Disposition"].decode().split('filename="')[1].rstrip('"')
    path = tmp_path / f"reply-{filename}"
    path.write_bytes(file_part.content)
    return json.loads(params_part.content), filename, sitk.ReadImage(str(path))


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
    params = {"poly": poly, "vertex_offset": [0, 4], "dimension": 2, "polygon_index": 0, "vertex_index": vertex,
              "propagate_neighbor": 2, "slice_index": 3}
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
    params = {"prev_poly": poly, "vertexOffset": [0, 3], "dimension": 3, "sliceIndex": 2, "polygonIndex": 0,
              "vertexIndex": 0, "propagate_neighbor": 1, "propagate_neighbor_3d": 1, "result_extension": ".nrrd"}
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


SQUARE = [[[2.5, 2.5], [2.5, 6.5], [6.5, 6.5], [6.5, 2.5]]]
GOOD_2D = {"poly": SQUARE, "vertex_offset": [1, 1], "dimension": 2, "polygon_index": 0, "vertex_index": 0,
           "propagate_neighbor": 1}
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
    "3D on a 2D image": ("fixpolygon", {**GOOD_2D, "dimension": 3, "poly": [SQUARE], "slice_index": 0}, "2d",
                         ["dimension 3", "3D volume", "2D"]),
    "slice_index 3D": ("fixpolygon", {**GOOD_2D, "dimension": 3, "poly": [SQUARE], "slice_index": 1}, "3d",
                       ["'slice_index' 1", "'poly' has 1 slices"]),
    "too many slices": ("fixpolygon", {**GOOD_2D, "dimension": 3, "poly": [SQUARE] * 6, "slice_index": 0}, "3d",
                        ["6 slices", "only 5"]),
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
    params = {"poly": slices, "vertex_offset": [0, 0], "dimension": 3, "slice_index": 1, "polygon_index": 0,
              "vertex_index": 0, "propagate_neighbor": 3, "propagate_neighbor_3d": 2}
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
    params = {"poly": BAR, "vertex_offset": [0, 5], "dimension": 2, "polygon_index": 0, "vertex_index": 1,
              "propagate_neighbor": 0}
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
    params = {"poly": BAR, "vertex_offset": [0, 0], "dimension": 2, "polygon_index": 0, "vertex_index": 0, **options}
    reply = post(client, "fixpolygon", params, data, "slice.png" if upload == "png" else "slice.nii.gz")
    _, name, content = png_reply(reply)
    assert name == filename
    path = tmp_path / f"back-{name}"
    path.write_bytes(content)
    mask = read_png(content, tmp_path) if name.endswith(".png") else sitk.ReadImage(str(path))
    assert mask.GetSize() == (37, 23) and mask.GetPixelID() == pixel
    assert sitk.GetArrayFromImage(mask).sum() == 4 * 18


# ------------------------------------------------------------------------ hostile params, bounds, lane


def deep(levels: int):
    value: list = [1.5, 2.5]
    for _ in range(levels):
        value = [value]
    return value


HOSTILE = {
    "more_points huge": ("mask2polygon", {"more_points": 10**30}, 400),
    "more_points 5000 digits in a string": ("mask2polygon", {"more_points": "1" + "0" * 5000}, 400),
    "more_points true": ("mask2polygon", {"more_points": True}, 400),
    "more_points NaN": ("mask2polygon", {"more_points": float("nan")}, 400),
    "index 1e300": ("fixpolygon", {**GOOD_2D, "polygon_index": 1e300}, 400),
    "index huge": ("fixpolygon", {**GOOD_2D, "vertex_index": 10**40}, 400),
    "index true": ("fixpolygon", {**GOOD_2D, "vertex_index": True}, 400),
    "neighbours huge": ("fixpolygon", {**GOOD_2D, "propagate_neighbor": 10**30}, 400),
    "3D neighbours huge": ("fixpolygon", {**GOOD_2D, "dimension": 3, "poly": [SQUARE], "slice_index": 0,
                                          "propagate_neighbor_3d": 1e20}, 400),
    "dimension text": ("fixpolygon", {**GOOD_2D, "dimension": "3D"}, 400),
    "offset NaN": ("fixpolygon", {**GOOD_2D, "vertex_offset": [float("nan"), 0]}, 400),
    "offset Infinity": ("fixpolygon", {**GOOD_2D, "vertex_offset": [0, float("inf")]}, 400),
    "offset huge int": ("fixpolygon", {**GOOD_2D, "vertex_offset": [10**400, 0]}, 400),
    "offset nested": ("fixpolygon", {**GOOD_2D, "vertex_offset": [[1, 2], [3, 4]]}, 400),
    "offset deep string": ("fixpolygon", {**GOOD_2D, "vertex_offset": "[" * 100_000 + "]" * 100_000}, 400),
    "poly deep": ("fixpolygon", {**GOOD_2D, "poly": [deep(40)]}, 400),
    "poly deep string": ("fixpolygon", {**GOOD_2D, "poly": "[" * 100_000 + "]" * 100_000}, 400),
    "poly object": ("fixpolygon", {**GOOD_2D, "poly": {"0": SQUARE}}, 400),
    "poly NaN vertex": ("fixpolygon", {**GOOD_2D, "poly": [[[float("nan"), 1], [2, 3], [4, 5]]]}, 400),
    "poly huge vertex": ("fixpolygon", {**GOOD_2D, "poly": [[[10**30, 1], [2, 3], [4, 5]]]}, 400),
    "poly true vertex": ("fixpolygon", {**GOOD_2D, "poly": [[[True, False], [2, 3], [4, 5]]]}, 400),
    "poly null vertex": ("fixpolygon", {**GOOD_2D, "poly": [[None, [2, 3], [4, 5]]]}, 400),
    "poly text vertex": ("fixpolygon", {**GOOD_2D, "poly": [[["1.5", "2"], [2, 3], [4, 5]]]}, 400),
    "poly ragged": ("fixpolygon", {**GOOD_2D, "poly": [[[1, 2], [2, 3, 4], [4, 5]]]}, 400),
    "3D poly slices not lists": ("fixpolygon", {**GOOD_2D, "dimension": 3, "poly": [5], "slice_index": 0}, 400),
    "result_extension a number": ("fixpolygon", {**GOOD_2D, "result_extension": 5}, 400),
    "result_extension long": ("fixpolygon", {**GOOD_2D, "result_extension": "x" * 100}, 400),
    "result_extension png for 3D": ("fixpolygon", {**GOOD_2D, "result_extension": ".png"}, 400),
    "result_dtype object": ("fixpolygon", {**GOOD_2D, "result_dtype": {"a": 1}}, 400),
    "result_dtype float": ("fixpolygon", {**GOOD_2D, "result_dtype": "float64"}, 400),
    "result_compress list": ("fixpolygon", {**GOOD_2D, "result_compress": [1]}, 400),
    # 4000 vertices alternating far above and below the image: 4000 edges × 20000 rows each
    "fill work": ("fixpolygon", {**GOOD_2D, "poly": [[[(-1) ** n * 1e6, n] for n in range(4000)]]}, 413),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_params_are_a_4xx_with_a_one_line_message(client, tmp_path, case):
    op, params, status = HOSTILE[case]
    size = (1, 20000, 2) if case == "fill work" else SIZE  # 20000 rows (j): cheap to upload, costly to fill
    reply = post(client, op, params, volume_bytes(np.zeros(size, np.uint8), tmp_path))
    assert reply.status_code == status, reply.get_data(as_text=True)
    message = reply.get_json()["error"]["message"]
    assert "\n" not in message and len(message) < 400, message
    if case == "fill work":
        assert "80000000 grid rows" in message and str(polygons_blueprint.polygons.MAX_ROW_CROSSINGS) in message
    if case == "result_extension png for 3D":
        assert "one 2D slice" in message and ".nii.gz" in message


def test_bad_output_query_is_a_400(client, tmp_path):
    data = volume_bytes(np.zeros(SIZE, np.uint8), tmp_path)
    reply = client.post("/v1/fixpolygon?output=bogus", data={"params": json.dumps(GOOD_2D),
                                                             "datapoint": (io.BytesIO(data), "v.nii.gz")})
    assert reply.status_code == 400 and "output" in reply.get_json()["error"]["message"]


def test_mask2polygon_refuses_too_many_contour_vertices_before_tracing(client, tmp_path):
    i, j = np.indices((800, 800))
    checkerboard = ((i + j) % 2).astype(np.uint8)[:, :, None]  # every other voxel a blob: 1.28 million vertices
    reply = post(client, "mask2polygon", {}, volume_bytes(checkerboard, tmp_path))
    assert reply.status_code == 413, reply.get_data(as_text=True)
    message = reply.get_json()["error"]["message"]
    assert f"more than {polygons_blueprint.polygons.MAX_VERTICES} vertices" in message and "slice 0" in message
    corners = np.zeros((4100, 4100, 1), np.uint8)
    corners[0, 0] = corners[-1, -1] = 1  # two voxels, but a 4102² box to trace
    reply = post(client, "mask2polygon", {}, volume_bytes(corners, tmp_path))
    assert reply.status_code == 413, reply.get_data(as_text=True)
    assert "slice 0 spans 16826404 voxels" in reply.get_json()["error"]["message"]


def test_both_endpoints_run_in_the_interactive_lane(client, tmp_path):
    app = client.application
    saved = app.extensions["aiaa.scheduler"]
    scheduler = app.extensions["aiaa.scheduler"] = Scheduler(1, 0, 1, 0)  # one slot per lane, no queue
    mask = volume_bytes(np.zeros(SIZE, np.uint8), tmp_path)
    try:
        with scheduler.run("segmentation"):  # the batch lane full: polygon edits do not wait for it
            assert post(client, "mask2polygon", {}, mask).status_code == 200
            assert post(client, "fixpolygon", GOOD_2D, mask).status_code == 200
        with scheduler.run("deepgrow"):  # the interactive lane full: they queue with the clicks (none may wait)
            for op, params in (("mask2polygon", {}), ("fixpolygon", GOOD_2D)):
                reply = post(client, op, params, mask)
                assert reply.status_code == 503 and "Retry-After" in reply.headers
    finally:
        app.extensions["aiaa.scheduler"] = saved


def test_fixpolygon_memory_is_about_one_byte_per_voxel(client, tmp_path):
    size = (3000, 2000, 2)  # 12 million voxels
    triangle = [[[-5.0, -5.0], [1990.0, 10.0], [1000.0, 2990.0]]]  # most of slice 1
    params = {**GOOD_2D, "poly": triangle, "vertex_offset": [0, 0], "slice_index": 1}
    data = volume_bytes(np.zeros(size, np.uint8), tmp_path)
    tracemalloc.start()
    try:
        reply = post(client, "fixpolygon", params, data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    _, _, mask = read_multipart(reply, tmp_path)
    filled = to_array(mask)[:, :, 1].T
    assert np.array_equal(filled, rasterise([np.asarray(triangle[0])], size[1::-1]))
    assert filled.sum() > 0.4 * size[0] * size[1]
    # the mask (1 byte/voxel), filled in place; the previous fill took ~11 bytes per voxel here
    assert peak < 1.5 * np.prod(size), f"{peak / np.prod(size):.1f} bytes per voxel"


def test_masks_and_tracing_are_charged_to_the_request_memory_ledger(client, tmp_path, monkeypatch):
    size = (3000, 2000, 2)  # decoded 12 MB; the fixpolygon mask 2 bytes per voxel + a slice of toggles: 30 MB
    image = np.zeros(size, np.uint8)
    image[100:2900, 100:1900, 1] = 1  # tracing it: its slice, 10 bytes per voxel of its box: ~56 MB
    data = volume_bytes(image, tmp_path)
    settings = client.application.config["SETTINGS"]
    workers = settings.interactive_workers + settings.batch_workers
    monkeypatch.setattr(settings, "memory_budget_bytes", workers * 40 * 2**20)  # 40 MiB per request
    fix = post(client, "fixpolygon", {**GOOD_2D, "slice_index": 1}, data)
    assert fix.status_code == 413, fix.get_data(as_text=True)
    assert "the 3000×2000×2 mask" in fix.get_json()["error"]["message"]
    trace = post(client, "mask2polygon", {}, data)
    assert trace.status_code == 413, trace.get_data(as_text=True)
    assert "tracing the 9200 contour vertices of the 3000×2000×2 mask" in trace.get_json()["error"]["message"]
    monkeypatch.setattr(settings, "memory_budget_bytes", workers * 100 * 2**20)
    assert post(client, "fixpolygon", {**GOOD_2D, "slice_index": 1}, data).status_code == 200
    assert post(client, "mask2polygon", {}, data).status_code == 200
