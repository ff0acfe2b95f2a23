"""Inference endpoint rules from the contract: /v1/inference dispatch (Slicer's deepgrow dict), point
formats (lists or JSON strings, floats, clamping one voxel outside), and the 4xx for bad points."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests
import SimpleITK as sitk
from aiaa_helpers import assert_same_grid, parse_result, post, read_mask, to_ijk

from aiaa_core.evaluation import centre_click, dice, extreme_points
from aiaa_core.phantoms import LABELS, make_phantom, write_phantom


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    phantom = make_phantom(500_000, size=(96, 84, 56), spacing=(3.5, 3.5, 3.5), orientation="LAS")
    path, _ = write_phantom(phantom, tmp_path_factory.mktemp("contract"))
    truth = to_ijk(phantom.label) == LABELS["spleen"]
    return phantom, [("datapoint", (path.name, path.read_bytes()))], truth


def test_inference_dispatches_slicer_deepgrow_dict(live_server, case, tmp_path):
    phantom, files, truth = case
    click = centre_click(truth)
    params = {"foreground": [click], "background": [], "current_point": [click]}  # Slicer sends [[x, y, z]]
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
    result, name, data = parse_result(post(live_server.url, "dextr3d", "extreme_points", files, params))
    assert_same_grid(read_mask(data, name, tmp_path), phantom.image)
    assert result["label_names"] == {}  # class-agnostic: the binary mask is the object pointed at, not a class


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
    assert requests.get(f"{live_server.url}/v1/models", timeout=10).status_code == 200  # and carries on


def test_mask2polygon_and_fixpolygon_on_a_live_server(live_server, case, tmp_path):
    phantom, files, truth = case
    mask_path = tmp_path / "spleen.nii.gz"
    sitk.WriteImage(phantom.label == LABELS["spleen"], str(mask_path))
    reply = requests.post(
        f"{live_server.url}/v1/mask2polygon",
        data={"params": json.dumps({"more_points": 2})},
        files={"datapoint": (mask_path.name, mask_path.read_bytes())},
        timeout=60,
    )
    assert reply.status_code == 200 and reply.headers["Content-Type"] == "application/json"
    slices = reply.json()
    assert len(slices) == phantom.image.GetSize()[2]
    k = int(np.argmax([truth[:, :, z].sum() for z in range(truth.shape[2])]))
    assert slices[k] and all(len(polygon) >= 3 for polygon in slices[k])
    params = {
        "poly": slices[k],
        "vertex_offset": [2, 0],
        "dimension": 2,
        "polygon_index": 0,
        "vertex_index": 0,
        "propagate_neighbor": 2,
        "slice_index": k,
    }
    result, name, data = parse_result(post(live_server.url, "fixpolygon", "", files, params))
    moved = result["poly"][0][0]
    assert moved == pytest.approx([slices[k][0][0][0] + 2, slices[k][0][0][1]])
    mask = read_mask(data, name, tmp_path)
    assert_same_grid(mask, phantom.image)
    assert to_ijk(mask)[:, :, k].sum() > 0 and to_ijk(mask)[:, :, (k + 5) % truth.shape[2]].sum() == 0


def test_result_compress_false_as_a_string(live_server, case, tmp_path):
    phantom, files, _ = case
    _, name, data = parse_result(
        post(
            live_server.url,
            "segmentation",
            "segmentation_spleen",
            files,
            {"result_compress": "false", "result_extension": ".nrrd"},
        )
    )
    assert name == "result.nrrd" and b"encoding: raw" in data[:400]
    assert_same_grid(read_mask(data, name, tmp_path), phantom.image)
