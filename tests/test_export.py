"""`aiaa export`: each app model as an MMAR and a MONAI bundle, read back by the server's own readers,
gives the app model's mask on the input grid."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT

from aiaa_core.phantoms import LABELS, make_phantom
from aiaa_core.volumes import to_array
from server.app_loader import import_app_module
from server.cli import main
from server.inference import describe_mask, run_model
from server.model_formats import load_model
from server.registry import ServedModel

APP_DIR = REPO_ROOT / "apps" / "spleen"
MODELS = ("segmentation_spleen", "deepgrow_3d", "extreme_points")


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(7, size=(64, 56, 40), spacing=(3.0, 2.5, 3.5), orientation="LPS")


def request_for(name: str, phantom) -> dict:
    """The request a clinician would send: none, a click in the spleen, or its six extreme points."""
    spleen = (to_array(phantom.label) == LABELS["spleen"]).astype(np.uint8)
    if name == "deepgrow_3d":
        centre = np.round(np.argwhere(spleen).mean(0)).astype(int)
        return {"foreground": [centre.tolist()], "background": []}
    if name == "extreme_points":
        return {"points": describe_mask(spleen)["points"]}
    return {}


@pytest.fixture(scope="module")
def app_masks(phantom):
    """The app models' own masks (eager PyTorch, as the exported TorchScript runs eagerly too)."""
    app_model = import_app_module(APP_DIR, "lib.export").app_model

    masks = {}
    for name in MODELS:
        task, _ = app_model(APP_DIR, name)
        app = ServedModel(name=name, task=task, source="app")
        masks[name] = (run_model(app, phantom.image, request_for(name, phantom))[0], app.info())
    return masks


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Every model in both formats, exported once by the command line's entry point (`aiaa export`)."""
    out = tmp_path_factory.mktemp("exports")
    for name in MODELS:
        main(["export", name, "--format", "mmar", "bundle", "--out", str(out)])
    return out


def unpack(archive: Path, folder: Path) -> Path:
    with zipfile.ZipFile(archive) as z:
        z.extractall(folder)
    return folder


@pytest.mark.parametrize("fmt", ["mmar", "bundle"])
@pytest.mark.parametrize("name", MODELS)
def test_exported_model_gives_the_app_models_mask(tmp_path, phantom, app_masks, exported, name, fmt):
    folder = unpack(exported / f"{name}-{fmt}.zip", tmp_path / name)
    model = load_model(folder, f"{name}_{fmt}")
    mask, _ = run_model(model, phantom.image, request_for(name, phantom))
    app_mask, app_info = app_masks[name]
    assert mask.shape == phantom.image.GetSize()
    assert mask.any()
    assert np.array_equal(mask, app_mask), f"{int((mask != app_mask).sum())} voxels differ"
    info = model.info()
    assert info["source"] == fmt and info["engine"] == ("torchscript" if fmt == "mmar" else "torch")
    for key in ("type", "labels", "description", "deepgrow", "padding", "roi", "sigma"):
        assert info.get(key) == app_info.get(key), key


def test_mmar_layout_and_v4_config(exported):
    with zipfile.ZipFile(exported / "extreme_points-mmar.zip") as z:
        assert sorted(z.namelist()) == ["config/config_aiaa.json", "models/model.ts"]
        config = json.loads(z.read("config/config_aiaa.json"))
    assert isinstance(config["version"], str)
    assert config["inference"]["AIAA"]["name"] == "aiaa.inference.PyTorchInference"
    names = [step["name"] for step in config["pre_transforms"] + config["post_transforms"]]
    assert names[0] == "monai.transforms.LoadImaged"
    assert "aiaa.transforms.CropAroundPointsd" in names and "aiaa.transforms.PasteCropd" in names
    with zipfile.ZipFile(exported / "segmentation_spleen-bundle.zip") as z:
        assert sorted(z.namelist()) == ["configs/inference.json", "configs/metadata.json", "models/model.pt"]
        metadata = json.loads(z.read("configs/metadata.json"))
    assert metadata["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "spleen"}
