"""Inference endpoint rules from the contract: /v1/inference dispatch (Slicer's deepgrow dict), point
formats (lists or JSON strings, floats, clamping one voxel outside), and the 4xx for bad points."""

from __future__ import annotations

import json

import pytest
from aiaa_helpers import assert_same_grid, parse_result, post, read_mask, to_ijk

from lib.evaluation import centre_click, dice, extreme_points
from server.phantoms import LABELS, make_phantom, write_phantom


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    phantom = make_phantom(500_000, size=(96, 84, 56), spacing=(3.5, 3.5, 3.5), orientation="LAS")
    path, _ = write_phantom(phantom, tmp_path_factory.mktemp("contract"))
    truth = to_ijk(phantom.label) == LABELS["spleen"]
    return phantom, [("datapoint", (path.name, path.read_bytes()))], truth


def test_inference_dispatches_slicer_deepgrow_dict(live_server, case, tmp_path):
    phantom, files, truth = case
    click = centre_click(truth)
    params = {"foreground": [click], "background": [], "current_point": click}
    result, name, data = parse_result(post(live_server.url, "inference", "deepgrow_3d", files, params))
    mask = read_mask(data, name, tmp_path)
    assert_same_grid(mask, phantom.image)
    assert dice(to_ijk(mask), truth) > 0.6 and "crop" in result


def test_inference_dispatches_segmentation(live_server, case, tmp_path):
    phantom, files, truth = case
    result, name, data = parse_result(post(live_server.url, "inference", "segmentation_spleen", files))
    assert_same_grid(read_mask(data, name, tmp_path), phantom.image)
    assert result["label_names"] == {"spleen": 1}


def test_points_as_json_string_floats_and_edge_clamp(live_server, case, tmp_path):
    phantom, files, truth = case
    points = [[p[0] + 0.2, p[1] - 0.2, p[2]] for p in extreme_points(truth)]
    size = phantom.image.GetSize()
    points.append([size[0], size[1], size[2]])  # one voxel past the far corner: clamped, not refused
    params = {"points": json.dumps(points)}
    _, name, data = parse_result(post(live_server.url, "dextr3d", "extreme_points", files, params))
    assert_same_grid(read_mask(data, name, tmp_path), phantom.image)


@pytest.mark.parametrize(
    ("op", "model", "params", "fragment"),
    [
        ("dextr3d", "extreme_points", {"points": [[10, 10, 10]] * 5}, "at least 6 points"),
        ("dextr3d", "extreme_points", {"points": [[10, 10, 10]] * 5 + [[500, 10, 10]]}, "outside the image"),
        ("dextr3d", "extreme_points", {"points": "[[1, 2"}, "not a valid point list"),
        ("deepgrow", "deepgrow_3d", {"foreground": [], "background": [[10, 10, 10]]}, "at least 1 points"),
        ("deepgrow", "deepgrow_3d", {"foreground": [["a", "b", "c"]]}, "list of [x, y, z] points"),
        ("deepgrow", "segmentation_spleen", {"foreground": [[10, 10, 10]]}, "needs a deepgrow model"),
        ("segmentation", "deepgrow_3d", {}, "needs a segmentation model"),
    ],
)
def test_bad_points_and_wrong_model_type(live_server, case, op, model, params, fragment):
    _, files, _ = case
    reply = post(live_server.url, op, model, files, params)
    assert reply.status_code == 400, reply.text
    assert fragment in reply.json()["error"]["message"]
