"""Hostile parameters to the polygon endpoints, their bounds (vertices, fill work, memory) and their lane."""

from __future__ import annotations

import io
import json
import tracemalloc

import numpy as np
import pytest
from polygon_helpers import GOOD_2D, SIZE, SQUARE, client, post, read_multipart, volume_bytes

from aiaa_core.volumes import to_array
from server.blueprints import polygons as polygons_blueprint
from server.polygons import rasterise
from server.scheduler import Scheduler

__all__ = ["client"]  # the fixture


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
    "3D neighbours huge": (
        "fixpolygon",
        {**GOOD_2D, "dimension": 3, "poly": [SQUARE], "slice_index": 0, "propagate_neighbor_3d": 1e20},
        400,
    ),
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
    reply = client.post(
        "/v1/fixpolygon?output=bogus", data={"params": json.dumps(GOOD_2D), "datapoint": (io.BytesIO(data), "v.nii.gz")}
    )
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
