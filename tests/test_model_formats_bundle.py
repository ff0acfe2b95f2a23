"""MONAI bundles: only what inference needs is resolved, every `_target_` and expression is checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from model_archives import spleen_inference_config
from monai.networks.nets import UNet

from aiaa_core.phantoms import make_phantom
from server.errors import BadRequest
from server.inference import run_model
from server.model_formats import load_model
from tests.test_model_formats import SMALL_UNET, ThresholdNet, dice, expected_mask


def spleen_style_config() -> dict:
    """Shaped like the model zoo's spleen_ct_segmentation inference.json, data loading and evaluator included."""
    return spleen_inference_config({"spatial_dims": 3, **SMALL_UNET})


METADATA = {
    "version": "0.5.2",
    "description": "A spleen-style bundle built by the tests",
    "network_data_format": {
        "inputs": {"image": {"type": "image", "num_channels": 1}},
        "outputs": {"pred": {"type": "image", "num_channels": 2, "channel_def": {"0": "background", "1": "bright"}}},
    },
}


def write_bundle(folder: Path, config: dict, module: torch.nn.Module, weights="model.ts", fmt="json", metadata=None):
    (folder / "configs").mkdir(parents=True)
    (folder / "models").mkdir()
    text = json.dumps(config) if fmt == "json" else yaml.safe_dump(config)
    (folder / "configs" / f"inference.{fmt}").write_text(text)
    (folder / "configs" / "metadata.json").write_text(json.dumps(metadata or METADATA))
    if weights == "model.ts":
        torch.jit.script(module.eval()).save(str(folder / "models" / weights))
    else:
        torch.save(module.state_dict(), folder / "models" / weights)
    return folder


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(5, size=(64, 56, 40), spacing=(2.5, 3.0, 3.5), orientation="LPS")


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_spleen_style_bundle_loads_and_runs_on_the_input_grid(tmp_path, phantom, fmt):
    model = load_model(write_bundle(tmp_path, spleen_style_config(), ThresholdNet(), fmt=fmt), "bundle")
    info = model.info()
    assert info["source"] == "bundle" and info["type"] == "segmentation" and info["labels"] == ["bright"]
    assert info["version"] == "0.5.2" and info["description"] == METADATA["description"]
    mask, _ = run_model(model, phantom.image, {})
    assert mask.shape == phantom.image.GetSize()
    assert dice(mask, expected_mask(phantom.image)) > 0.9
    assert not (tmp_path / "eval").exists()  # SaveImaged was dropped


def test_state_dict_bundle_builds_network_def(tmp_path, phantom):
    unet = UNet(spatial_dims=3, **SMALL_UNET, norm="batch")
    config = edited("preprocessing#transforms#2#_desc_", "questions: ask dev@example.org")  # '@' in plain text
    model = load_model(write_bundle(tmp_path, config, unet, "model.pt"), "bundle_pt")
    assert model.info()["engine"] == "torch"
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.task._network(x), unet.eval()(x), atol=1e-5)
    assert run_model(model, phantom.image, {})[0].shape == phantom.image.GetSize()


def test_metadata_type_and_labels(tmp_path):
    metadata = {**json.loads(json.dumps(METADATA)), "type": "deepgrow"}  # a deep copy
    metadata["network_data_format"]["outputs"]["pred"]["channel_def"] = {"2": "kidney", "0": "background", "1": "liver"}
    model = load_model(write_bundle(tmp_path, spleen_style_config(), ThresholdNet(), metadata=metadata), "b")
    assert model.info()["type"] == "deepgrow" and model.info()["deepgrow"] == "3D"
    assert model.info()["labels"] == ["liver", "kidney"]


def edited(path: str, value) -> dict:
    """The spleen-style config with the value at `a#b#0#c` replaced."""
    config = spleen_style_config()
    *parents, last = path.split("#")
    node = config
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[int(last) if isinstance(node, list) else last] = value
    return config


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (
            "preprocessing#transforms#4#a_min",
            "$__import__('pathlib').Path('pwned').touch()",
            "'preprocessing#transforms#4#a_min': expression",
        ),
        ("inferer#roi_size", "$[32] * 3", "'inferer#roi_size': expression '\\$\\[32\\] \\* 3' is not accepted"),
        ("preprocessing#transforms#2#_target_", "os.system", "_target_ 'os.system' is not allowed"),
        ("preprocessing#transforms#2#_target_", "Lambdad", "_target_ 'Lambdad' is not allowed"),
        ("preprocessing#transforms#2#_target_", "$print", "_target_ must be a class name"),
        ("network_def#_target_", "torch.nn.Linear", "_target_ 'torch.nn.Linear' is not allowed"),
        ("preprocessing#transforms#2#_requires_", "@dataset", "_requires_ not accepted"),
        ("preprocessing#transforms#2#_mode_", "callable", "_mode_ not accepted"),
        ("inferer#roi_size", "%/etc/passwd#x", "macros"),
        ("preprocessing#transforms#2#_disabled_", "$__import__('os')", "'preprocessing#transforms#2#_disabled_'"),
        ("inferer#roi_size", "@nowhere", "'@nowhere', which it does not define"),
        ("preprocessing#transforms#3#pixdim", "@datalist", "'datalist': expression"),
    ],
)
def test_bad_bundle_parts_are_refused_by_key(tmp_path, monkeypatch, path, value, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BadRequest, match=message):
        load_model(write_bundle(tmp_path / "b", edited(path, value), ThresholdNet()), "bad")
    assert not (tmp_path / "pwned").exists()


def test_broken_bundles(tmp_path):
    folder = write_bundle(tmp_path / "a", spleen_style_config(), ThresholdNet())
    (folder / "configs" / "metadata.json").unlink()
    with pytest.raises(BadRequest, match="no configs/metadata.json"):
        load_model(folder, "bad")
    folder = write_bundle(tmp_path / "b", spleen_style_config(), ThresholdNet(), fmt="yaml")
    (folder / "configs" / "inference.yaml").write_text("a: [unclosed")
    with pytest.raises(BadRequest, match="configs/inference.yaml is not valid YAML"):
        load_model(folder, "bad")
    config = spleen_style_config()
    del config["inferer"]
    with pytest.raises(BadRequest, match="has no inferer"):
        load_model(write_bundle(tmp_path / "c", config, ThresholdNet()), "bad")
    config = edited("inferer", {"_target_": "Activationsd", "keys": "pred"})
    with pytest.raises(BadRequest, match="'inferer' must be a monai.inferers class"):
        load_model(write_bundle(tmp_path / "d", config, ThresholdNet()), "bad")
    metadata = {**METADATA, "type": "classification"}
    with pytest.raises(BadRequest, match="Model type 'classification'"):
        load_model(write_bundle(tmp_path / "e", spleen_style_config(), ThresholdNet(), metadata=metadata), "bad")


MALFORMED = {
    "preprocessing is a string": lambda c, m: c.update(preprocessing="hello"),
    "inferer is a number": lambda c, m: c.update(inferer=3),
    "references in a cycle": lambda c, m: c.update(inferer="@a", a="@inferer"),
    "outputs is a list": lambda c, m: m["network_data_format"].update(outputs=[1]),
    "network_data_format is a string": lambda c, m: m.update(network_data_format="x"),
    "channel_def is a list": lambda c, m: m["network_data_format"]["outputs"]["pred"].update(channel_def=[1]),
    "version is an object": lambda c, m: m.update(version={"major": 1}),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_bundles_are_400_never_a_crash(tmp_path, case):
    config, metadata = spleen_style_config(), json.loads(json.dumps(METADATA))
    MALFORMED[case](config, metadata)
    with pytest.raises(BadRequest):
        load_model(write_bundle(tmp_path, config, ThresholdNet(), metadata=metadata), "bad")
