"""The app runs under stock `monailabel start_server`: /info lists its three models and their trainers, /infer
returns masks on the input grid (MONAI Label's own writer, fed by the app's RestoreGeometryd)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests
import SimpleITK as sitk
from aiaa_helpers import assert_same_grid, to_ijk
from conftest import REPO_ROOT
from monailabel_server import stock_monailabel

from aiaa_core.evaluation import dice, extreme_points
from aiaa_core.phantoms import LABELS, make_phantom, write_phantom

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def monailabel_server(tmp_path_factory):
    studies = tmp_path_factory.mktemp("studies")
    phantom = make_phantom(300_000, size=(96, 84, 56), spacing=(3.5, 3.5, 3.5), orientation="LPS")
    image_path, label_path = write_phantom(phantom, tmp_path_factory.mktemp("truth"), stem="case")
    (studies / "case.nii.gz").write_bytes(image_path.read_bytes())
    with stock_monailabel(REPO_ROOT / "apps" / "spleen", studies, cwd=REPO_ROOT) as (url, _):
        yield url, phantom


def test_info_lists_the_three_models(monailabel_server):
    url, _ = monailabel_server
    models = requests.get(f"{url}/info/", timeout=30).json()["models"]
    assert {name: m["type"] for name, m in models.items()} == {
        "segmentation_spleen": "segmentation",
        "deepgrow_3d": "deepgrow",
        "extreme_points": "annotation",
    }
    assert models["segmentation_spleen"]["labels"] == {"spleen": 1}


def test_info_lists_a_trainer_per_model(monailabel_server):
    """Each model trains under MONAI Label (tests/test_monailabel_training.py runs one); its config is offered."""
    url, _ = monailabel_server
    trainers = requests.get(f"{url}/info/", timeout=30).json()["trainers"]
    assert set(trainers) == {"segmentation_spleen", "deepgrow_3d", "extreme_points"}
    for trainer in trainers.values():
        assert {"max_epochs", "steps_per_epoch", "publish", "pretrained"} <= set(trainer["config"])


@pytest.mark.parametrize("model", ["segmentation_spleen", "extreme_points"])
def test_infer_returns_a_mask_on_the_input_grid(monailabel_server, tmp_path, model):
    url, phantom = monailabel_server
    truth = to_ijk(phantom.label) == LABELS["spleen"]
    params = {"points": extreme_points(truth)} if model == "extreme_points" else {}
    reply = requests.post(
        f"{url}/infer/{model}",
        params={"image": "case", "output": "image"},
        data={"params": json.dumps(params)},
        timeout=300,
    )
    assert reply.status_code == 200, reply.text[:500]
    path = tmp_path / "mask.nii.gz"
    path.write_bytes(reply.content)
    mask = sitk.ReadImage(str(path))
    assert_same_grid(mask, phantom.image)
    assert dice(to_ijk(mask), truth) >= 0.85
    assert np.unique(to_ijk(mask)).tolist() == [0, 1]
