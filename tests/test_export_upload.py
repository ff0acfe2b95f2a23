"""Exported models and a Clara 4.0 MMAR uploaded to a live server: the same masks as the app models, on the
input grid, through `PUT /admin/model` and the AIAA inference endpoints."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
import requests
from admin_helpers import ADMIN_ENV, archive_part, mask_reply, phantom_file, put_model, segment, served
from conftest import REPO_ROOT, start_server, stop_server

from aiaa_core.mask_geometry import dice
from aiaa_core.phantoms import LABELS, make_phantom, write_phantom
from aiaa_core.volumes import to_array
from server.app_loader import import_app_module
from server.inference import describe_mask
from tests.test_model_formats import clara4_config, write_mmar

APP_DIR = REPO_ROOT / "apps" / "spleen"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # --engine torch: the app models run eagerly, as the exported TorchScript does, so masks match exactly
    args = ("--models", "segmentation_spleen,extreme_points", "--engine", "torch", "--max-upload-mb", "64")
    live = start_server(tmp_path_factory.mktemp("export_upload"), *args, env=ADMIN_ENV)
    yield live
    stop_server(live)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    export_model = import_app_module(APP_DIR, "lib.export").export_model

    out = tmp_path_factory.mktemp("exports")
    return {
        (name, fmt): export_model(APP_DIR, name, fmt, out)
        for name, fmt in [
            ("segmentation_spleen", "mmar"),
            ("segmentation_spleen", "bundle"),
            ("extreme_points", "mmar"),
        ]
    }


def upload(server, name: str, archive) -> dict:
    reply = put_model(server.url, name, archive_part(archive.name, archive.read_bytes()))
    assert reply.status_code == 200, reply.text
    return reply.json()


@pytest.mark.parametrize("fmt", ["mmar", "bundle"])
def test_uploaded_export_segments_like_the_app_model(server, exports, tmp_path, fmt):
    model = upload(server, f"spleen_{fmt}", exports["segmentation_spleen", fmt])
    assert model["source"] == fmt and model["labels"] == ["spleen"] and isinstance(model["version"], str)
    image_path, _ = phantom_file(tmp_path)
    _, app_mask = segment(server.url, "segmentation_spleen", image_path, tmp_path)
    _, mask = segment(server.url, f"spleen_{fmt}", image_path, tmp_path)
    assert mask.any() and np.array_equal(mask, app_mask)


def test_uploaded_extreme_points_export_annotates_like_the_app_model(server, exports, tmp_path):
    model = upload(server, "ep_mmar", exports["extreme_points", "mmar"])
    assert model["type"] == "annotation" and model["roi"] == served(server.url)["extreme_points"]["roi"]
    phantom = make_phantom(4, size=(64, 56, 40), spacing=(3.0, 2.5, 3.5), orientation="LPS")
    image_path, _ = write_phantom(phantom, tmp_path, stem="ct")
    spleen = (to_array(phantom.label) == LABELS["spleen"]).astype(np.uint8)
    params = json.dumps({"points": describe_mask(spleen)["points"]})
    masks = []
    for name in ("extreme_points", "ep_mmar"):
        reply = requests.post(
            f"{server.url}/v1/dextr3d",
            params={"model": name},
            files={"datapoint": (image_path.name, image_path.read_bytes())},
            data={"params": params},
            timeout=300,
        )
        masks.append(mask_reply(reply, image_path, tmp_path)[1])
    assert masks[0].any() and np.array_equal(masks[0], masks[1])


def test_clara4_mmar_uploads_and_runs(server, tmp_path):
    folder = write_mmar(tmp_path / "clara4", clara4_config())
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path in folder.rglob("*"):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
    reply = put_model(server.url, "clara4", archive_part("clara4.zip", buffer.getvalue()))
    assert reply.status_code == 200, reply.text
    listed = served(server.url)["clara4"]
    assert listed["version"] == "4" and listed["clara"] == "4.0" and listed["engine"] == "torchscript"
    image_path, image = phantom_file(tmp_path)
    _, mask = segment(server.url, "clara4", image_path, tmp_path)
    expected = to_array(image) > 40.0  # the threshold network of the fixture
    assert dice(mask, expected) > 0.9
