"""MMAR configs (v4 and v2/v3) and their weights → served models: what loads, what runs, what is refused.

(About 400 lines on purpose: the Clara v2/v3/v4 configs and the refusals of each are read side by side.)
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from model_archives import model_bytes
from monai.networks.nets import UNet

from aiaa_core.mask_geometry import dice
from aiaa_core.phantoms import make_phantom
from aiaa_core.volumes import to_array, to_metatensor
from server.errors import BadRequest
from server.inference import run_model
from server.model_formats import load_model

HU_THRESHOLD = 40.0  # the threshold network's mask: voxels brighter than this, in the config's CT window
CT_WINDOW = {"a_min": -160.0, "a_max": 240.0, "b_min": 0.0, "b_max": 1.0, "clip": True}


class ThresholdNet(torch.nn.Module):
    """Background logit 0.5, foreground logit = the windowed intensity: argmax is `HU > HU_THRESHOLD`."""

    def __init__(self, in_channels: int = 1):  # extra input channels (point heatmaps) get weight 0
        super().__init__()
        self.conv = torch.nn.Conv3d(in_channels, 2, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[1, 0] = 1.0
            self.conv.bias.copy_(torch.tensor([0.5, 0.0]))

    def forward(self, x):
        return self.conv(x)


def clara4_config(version=4) -> dict:
    """A `config_aiaa.json` as Clara 4.0 wrote them: removed MONAI names, AIAA names, AIAA + TRITON sections."""
    return {
        "version": version,
        "type": "segmentation",
        "labels": ["bright"],
        "description": "Clara 4.0 style threshold model",
        "pre_transforms": [
            {"name": "monai.transforms.LoadImaged", "args": {"keys": "image"}},
            {"name": "monai.transforms.AddChanneld", "args": {"keys": "image"}},
            {"name": "monai.transforms.Orientationd", "args": {"keys": "image", "axcodes": "RAS"}},
            {"name": "monai.transforms.Spacingd", "args": {"keys": "image", "pixdim": [4.0, 4.0, 4.0]}},
            {"name": "monai.transforms.ScaleIntensityRanged", "args": {"keys": "image", **CT_WINDOW}},
            {"name": "monai.transforms.ToTensord", "args": {"keys": "image"}},
        ],
        "inference": {
            "input": "image",
            "output": "pred",
            "AIAA": {
                "name": "aiaa.inference.PyTorchInference",
                "args": {"scanning_window": True, "roi": [32, 32, 32], "overlap": 0.25, "device": "cuda"},
            },
            "TRITON": {
                "name": "aiaa.inference.TritonInference",
                "args": {"scanning_window": True, "roi": [32, 32, 32]},
                "triton_model_config": {"platform": "pytorch_libtorch", "max_batch_size": 1},
            },
            "meta_data": {"trained_on": "phantoms", "clara": "4.0"},
        },
        "post_transforms": [
            {"name": "monai.transforms.Activationsd", "args": {"keys": "pred", "softmax": True}},
            {"name": "monai.transforms.AsDiscreted", "args": {"keys": "pred", "argmax": True}},
            {"name": "monai.transforms.SqueezeDimd", "args": {"keys": "pred", "dim": 0}},
            {"name": "monai.transforms.ToNumpyd", "args": {"keys": "pred"}},
            {"name": "aiaa.transforms.Restored", "args": {"keys": "pred", "ref_image": "image"}},
            {"name": "aiaa.transforms.ExtremePointsd", "args": {"keys": "pred", "result": "result", "points": "pts"}},
            {"name": "aiaa.transforms.BoundingBoxd", "args": {"keys": "pred", "result": "result", "bbox": "bbox"}},
        ],
        "writer": {"name": "aiaa.transforms.Writer", "args": {"image": "pred", "json": "result"}},
    }


def write_mmar(folder: Path, config: dict | str, weights: str = "model.ts", module: torch.nn.Module | None = None):
    """An unpacked MMAR: config/config_aiaa.json and models/<weights> (TorchScript, state dict or ONNX)."""
    (folder / "config").mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(exist_ok=True)
    text = config if isinstance(config, str) else json.dumps(config)
    (folder / "config" / "config_aiaa.json").write_text(text)
    module = (module or ThresholdNet()).eval()
    path = folder / "models" / weights
    if weights in ("model.ts", "model.pt", "model.onnx"):
        path.write_bytes(model_bytes(module, weights.rsplit(".", 1)[1]))
    return folder


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(3, size=(64, 56, 40), spacing=(3.0, 2.5, 3.5), orientation="LPS")


def expected_mask(image) -> np.ndarray:
    return (to_array(image) > HU_THRESHOLD).astype(np.uint8)


def test_clara4_config_loads_and_runs_on_the_input_grid(tmp_path, phantom):
    model = load_model(write_mmar(tmp_path, clara4_config()), "clara4")
    info = model.info()
    assert info["version"] == "4" and isinstance(info["version"], str)
    assert info["type"] == "segmentation" and info["labels"] == ["bright"]
    assert info["source"] == "mmar" and info["engine"] == "torchscript"
    assert info["trained_on"] == "phantoms" and info["clara"] == "4.0"  # inference.meta_data merged
    mask, result = run_model(model, phantom.image, {})
    assert mask.shape == phantom.image.GetSize()
    assert set(np.unique(mask)) <= {0, 1}
    assert dice(mask, expected_mask(phantom.image)) > 0.9  # resampled to 4 mm and back: edges differ
    assert result["label_names"] == {"bright": 1} and len(result["points"]) == 6


SMALL_UNET = {"channels": [4, 8], "strides": [2], "in_channels": 1, "out_channels": 2}


@pytest.mark.parametrize("weights", ["model.pt", "model.onnx"])
def test_state_dict_and_onnx_weights(tmp_path, phantom, weights):
    """A state dict goes into the network the config names (Clara's `dimensions` is `spatial_dims`);
    ONNX runs in ONNX Runtime. Both compute what the saved network computes."""
    config = clara4_config()
    config["inference"]["network"] = {"name": "monai.networks.nets.UNet", "args": {"dimensions": 3, **SMALL_UNET}}
    unet = UNet(spatial_dims=3, **SMALL_UNET).eval()
    model = load_model(write_mmar(tmp_path, config, weights, unet), "weights")
    assert model.info()["engine"] == {"model.pt": "torch", "model.onnx": "onnxruntime"}[weights]
    mask, _ = run_model(model, phantom.image, {})
    assert mask.shape == phantom.image.GetSize()
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model.task._network(x), unet(x), atol=1e-4)


def test_pt_torchscript_archive_loads_as_torchscript(tmp_path, phantom):
    folder = write_mmar(tmp_path, clara4_config(), "model.ts")
    (folder / "models" / "model.ts").rename(folder / "models" / "model.pt")
    model = load_model(folder, "ts_in_pt")
    assert model.info()["engine"] == "torchscript"
    assert dice(run_model(model, phantom.image, {})[0], expected_mask(phantom.image)) > 0.9


class RunsCode:
    """Unpickling this calls `open(marker, "w")`: it would create the marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.mark.parametrize("container", ["torch_zip", "plain_pickle"])
def test_pickle_that_would_run_code_is_refused_without_running(tmp_path, container):
    config = clara4_config()
    config["inference"]["network"] = {"name": "UNet", "args": {"spatial_dims": 3, **SMALL_UNET}}
    folder = write_mmar(tmp_path / "mmar", config, "model.pt", UNet(spatial_dims=3, **SMALL_UNET))
    marker = tmp_path / "pwned"
    payload = {"conv.weight": torch.zeros(1), "evil": RunsCode(marker)}
    if container == "torch_zip":
        torch.save(payload, folder / "models" / "model.pt")
    else:
        (folder / "models" / "model.pt").write_bytes(pickle.dumps(payload))
    with pytest.raises(BadRequest, match="model.pt was refused: it is not a plain weights file"):
        load_model(folder, "evil")
    assert not marker.exists()


def mmar_with(tmp_path, **changes) -> Path:
    config = clara4_config()
    for key, value in changes.items():
        config[key] = value
    return write_mmar(tmp_path, config)


@pytest.mark.parametrize(
    ("pre_transforms", "message"),
    [
        (
            [{"name": "monai.transforms.Lambdad", "args": {"keys": "image"}}],
            "'monai.transforms.Lambdad' is not allowed",
        ),
        ([{"name": "os.system", "args": {}}], "'os.system' is not allowed"),
        ([{"name": "monai.transforms.__class__", "args": {}}], "'monai.transforms.__class__' is not allowed"),
        ([{"name": "monai.transforms.NoSuchThingd", "args": {}}], "'monai.transforms.NoSuchThingd' is not allowed"),
        ([{"name": "custom.MyTransformd", "args": {}}], "'custom.MyTransformd' is not allowed"),
        ([{"name": "custom.ExtremePointsd", "args": {}}], "'custom.ExtremePointsd' is not allowed"),
        ([{"name": "custom.LoadImaged", "args": {}}], "'custom.LoadImaged' is not allowed"),
        ([{"name": "monai.transforms.Spacingd", "args": {"keys": "image", "bogus": 1}}], "has no argument .bogus."),
        ([{"args": {}}], "must be an object with a 'name'"),
        ({"name": "x"}, "must be a list"),
    ],
)
def test_bad_transforms_are_refused_by_name(tmp_path, pre_transforms, message):
    with pytest.raises(BadRequest, match=message):
        load_model(mmar_with(tmp_path, pre_transforms=pre_transforms), "bad")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"type": "classification"}, "Model type 'classification' is not served"),
        ({"labels": "spleen"}, "'labels' must be a list"),
        ({"writer": {"name": "os.system"}}, "writer 'os.system' is not allowed"),
        ({"network": {"name": "torch.nn.Linear", "args": {}}}, "Network 'torch.nn.Linear' is not allowed"),
        ({"inference": {"AIAA": {"name": "evil.Inferer"}}}, "Inferer 'evil.Inferer' is not allowed"),
        (
            {"inference": {"AIAA": {"name": "aiaa.inference.PyTorchInference", "args": {"scanning_window": True}}}},
            "needs 'roi'",
        ),
    ],
)
def test_bad_config_sections_are_refused(tmp_path, changes, message):
    with pytest.raises(BadRequest, match=message):
        load_model(mmar_with(tmp_path, **changes), "bad")


def test_bad_json_missing_config_and_missing_weights(tmp_path):
    with pytest.raises(BadRequest, match="config/config_aiaa.json is not valid JSON"):
        load_model(write_mmar(tmp_path / "a", "{not json"), "bad")
    folder = write_mmar(tmp_path / "b", clara4_config())
    (folder / "models" / "model.ts").unlink()
    with pytest.raises(BadRequest, match="No model weights"):
        load_model(folder, "bad")
    with pytest.raises(BadRequest, match="Not a model folder"):
        load_model(tmp_path / "c", "bad")
    folder = write_mmar(tmp_path / "d", clara4_config(), "model.pt")
    with pytest.raises(BadRequest, match="state dict, so the config must name its network"):
        load_model(folder, "bad")
    (folder / "models" / "model.pt").write_bytes(b"garbage")
    with pytest.raises(BadRequest, match="model.pt"):
        load_model(folder, "bad")


def clara3_config() -> dict:
    """A TensorFlow-era v3 config (the network output is `model`), served with TorchScript weights."""
    return {
        "version": "3",
        "type": "segmentation",
        "labels": ["bright"],
        "description": "Clara 3 style threshold model",
        "pre_transforms": [
            {"name": "LoadNifti", "args": {"fields": "image"}},
            {"name": "ConvertToChannelsFirst", "args": {"fields": "image"}},
            {"name": "ScaleByResolution", "args": {"fields": "image", "target_resolution": [4.0, 4.0, 4.0]}},
            {"name": "ScaleIntensityRange", "args": {"fields": "image", **CT_WINDOW}},
        ],
        "inference": {
            "image": "image",
            "name": "TRTISInference",
            "args": {"scanning_window": True, "batch_size": 1, "roi": [32, 32, 32]},
            "tf": {"input_nodes": {"image": "NV_MODEL_INPUT"}, "output_nodes": {"model": "NV_MODEL_OUTPUT"}},
            "additional_info": {"era": "tensorflow"},
        },
        "post_transforms": [
            {"name": "ArgmaxAcrossChannels", "args": {"fields": "model"}},
            {"name": "FetchExtremePoints", "args": {"image_field": "image", "label_field": "model"}},
            {"name": "RestoreOriginalShape", "args": {"field": "model", "src_field": "image", "is_label": True}},
        ],
        "writer": {"name": "WriteNifti", "args": {"field": "model", "dtype": "uint8"}},
    }


def test_clara3_config_maps_tensorflow_era_names(tmp_path, phantom):
    model = load_model(write_mmar(tmp_path, clara3_config()), "clara3")
    info = model.info()
    assert info["version"] == "3" and info["era"] == "tensorflow" and info["labels"] == ["bright"]
    mask, _ = run_model(model, phantom.image, {})
    assert mask.shape == phantom.image.GetSize()
    assert dice(mask, expected_mask(phantom.image)) > 0.9


def test_clara3_extreme_points_model_crops_around_the_points(tmp_path, phantom):
    config = clara3_config()
    config.update(type="annotation", labels=[], roi=[32, 32, 32], sigma=3)
    # as Clara's: resample, crop around the points, heatmap channel (the resampling before the crop is dropped:
    # the crop is resized to `roi`, and the points are voxels of the input)
    config["pre_transforms"][3:3] = [{"name": "CropByExtremePoints", "args": {"fields": "image", "pad": 10}}]
    config["pre_transforms"].append({"name": "AddExtremePointsChannel", "args": {"image_field": "image"}})
    model = load_model(write_mmar(tmp_path, config, module=ThresholdNet(in_channels=2)), "dextr3d_v3")
    assert model.info()["roi"] == [32, 32, 32] and model.info()["padding"] == 20 and model.info()["sigma"] == 3
    points = [[20, 20, 10], [40, 20, 10], [30, 10, 10], [30, 30, 10], [30, 20, 5], [30, 20, 15]]
    mask, result = run_model(model, phantom.image, {"points": points})
    assert mask.shape == phantom.image.GetSize()
    (i0, i1), (j0, j1), (k0, k1) = result["crop"]
    outside = mask.copy()
    outside[i0:i1, j0:j1, k0:k1] = 0
    assert mask.any() and not outside.any()
    assert dice(mask[i0:i1, j0:j1, k0:k1], expected_mask(phantom.image)[i0:i1, j0:j1, k0:k1]) > 0.9


@pytest.mark.parametrize("name", ["ScaleByFactor", "monai.transforms.Spacingd", "CenterData"])
def test_clara3_unmapped_names_are_refused_by_name(tmp_path, name):
    config = clara3_config()
    config["pre_transforms"].append({"name": name, "args": {"fields": "image"}})
    with pytest.raises(BadRequest, match=f"v2/v3 transform '{name}' is not supported"):
        load_model(write_mmar(tmp_path, config), "bad")


class GuidedThresholdNet(torch.nn.Module):
    """Deepgrow 3D's input (image + two guidance channels) → one logit: the windowed intensity."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(3, 1, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0, 0] = 1.0
            self.conv.bias.zero_()

    def forward(self, x):
        return self.conv(x)


def clara4_deepgrow_config() -> dict:
    """Clara 4.0 / MONAI Label's DeepGrow 3D pipeline: depth-first channel moves, MONAI's deepgrow transforms
    (named both `aiaa.apps.deepgrow.*` and `monai.apps.deepgrow.transforms.*`), `RestoreLabeld`. As in Clara,
    `Spacingd` sees the depth-first volume's slices as channels, and the crop spans the depth (`spatial_size[0]`)."""
    centred = {**CT_WINDOW, "b_min": -0.5, "b_max": 0.5}  # sigmoid(x) > 0.5 where HU > HU_THRESHOLD
    return {
        "version": 4,
        "type": "deepgrow",
        "labels": [],
        "description": "Clara 4.0 style DeepGrow 3D",
        "dimension": 3,
        "pre_transforms": [
            {"name": "monai.transforms.LoadImaged", "args": {"keys": "image"}},
            {"name": "monai.transforms.AsChannelFirstd", "args": {"keys": "image"}},
            {"name": "monai.transforms.Spacingd", "args": {"keys": "image", "pixdim": [4.0, 4.0, 4.0]}},
            {
                "name": "aiaa.apps.deepgrow.AddGuidanceFromPointsd",
                "args": {"ref_image": "image", "guidance": "guidance", "dimensions": 3},
            },
            {"name": "monai.transforms.AddChanneld", "args": {"keys": "image"}},
            {
                "name": "monai.apps.deepgrow.transforms.SpatialCropGuidanced",
                "args": {"keys": "image", "guidance": "guidance", "spatial_size": [40, 24, 24], "margin": 4},
            },
            {
                "name": "monai.transforms.Resized",
                "args": {"keys": "image", "spatial_size": [16, 16, 16], "mode": "area"},
            },
            {"name": "aiaa.apps.deepgrow.ResizeGuidanced", "args": {"guidance": "guidance", "ref_image": "image"}},
            {"name": "monai.transforms.ScaleIntensityRanged", "args": {"keys": "image", **centred}},
            {"name": "aiaa.apps.deepgrow.AddGuidanceSignald", "args": {"image": "image", "guidance": "guidance"}},
        ],
        "inference": {"input": "image", "output": "pred", "AIAA": {"name": "aiaa.inference.PyTorchInference"}},
        "post_transforms": [
            {"name": "monai.transforms.Activationsd", "args": {"keys": "pred", "sigmoid": True}},
            {"name": "monai.transforms.AsDiscreted", "args": {"keys": "pred", "threshold": 0.5}},
            {"name": "monai.transforms.ToNumpyd", "args": {"keys": "pred"}},
            {"name": "aiaa.apps.deepgrow.RestoreLabeld", "args": {"keys": "pred", "ref_image": "image"}},
            {"name": "monai.transforms.AsChannelLastd", "args": {"keys": "pred"}},
        ],
    }


def test_clara4_deepgrow_pipeline_runs_on_the_input_grid(tmp_path, phantom):
    model = load_model(write_mmar(tmp_path, clara4_deepgrow_config(), module=GuidedThresholdNet()), "deepgrow")
    assert model.info()["type"] == "deepgrow" and model.info()["deepgrow"] == "3D"
    click = [40, 30, 20]
    mask, result = run_model(model, phantom.image, {"foreground": [click], "background": []})
    assert mask.shape == phantom.image.GetSize()
    (i0, j0, k0), (i1, j1, k1) = result["bbox"]
    assert i0 <= click[0] <= i1 and j0 <= click[1] <= j1 and k0 <= click[2] <= k1
    box = (slice(i0, i1 + 1), slice(j0, j1 + 1), slice(k0, k1 + 1))
    assert dice(mask[box], expected_mask(phantom.image)[box]) > 0.75  # through a 24→16 resize and back
    assert mask.sum() < 0.5 * expected_mask(phantom.image).sum()  # only the crop around the click


@pytest.mark.parametrize("config", [clara4_config, clara3_config])
def test_the_decoded_image_is_left_as_it_was(tmp_path, phantom, config):
    """A session hands every request the same decoded MetaTensor: running a model must not change it."""
    model = load_model(write_mmar(tmp_path, config()), "model")
    image = to_metatensor(phantom.image)
    meta, values = dict(image.meta), image.clone()
    model.task({"image": image, "skip_writer": True, "device": "cpu"})
    assert set(image.meta) == set(meta) and torch.equal(image, values) and not image.applied_operations


BROKEN = {
    "pre_transforms null": {"pre_transforms": None},
    "pre_transforms object": {"pre_transforms": {"a": 1}},
    "step is a string": {"pre_transforms": ["monai.transforms.Spacingd"]},
    "args is a list": {"pre_transforms": [{"name": "monai.transforms.Spacingd", "args": [1]}]},
    "name is a number": {"pre_transforms": [{"name": 5}]},
    "labels null": {"labels": None},
    "labels of numbers": {"labels": [1, 2]},
    "inference is a list": {"inference": []},
    "AIAA is a string": {"inference": {"AIAA": "x"}},
    "AIAA args is a list": {"inference": {"AIAA": {"name": "aiaa.inference.PyTorchInference", "args": [1]}}},
    "roi of strings": {"inference": {"AIAA": {"args": {"scanning_window": True, "roi": ["a"]}}}},
    "meta_data is a list": {"inference": {"meta_data": [1]}},
    "network is a string": {"network": "UNet"},
    "network args wrong": {"network": {"name": "UNet", "args": {"nope": 1}}},
    "writer is a list": {"writer": []},
    "type is a list": {"type": ["segmentation"]},
    "version is an object": {"version": {"major": 4}},
}


LOADS_ANYWAY = {"pre_transforms null", "inference is a list", "network args wrong"}  # (TorchScript: no network)


@pytest.mark.parametrize("case", list(BROKEN))
def test_malformed_configs_are_400_never_a_crash(tmp_path, case):
    config = {**clara4_config(), **BROKEN[case]}
    if case in LOADS_ANYWAY:
        assert load_model(write_mmar(tmp_path, config), "odd").type == "segmentation"
        return
    with pytest.raises(BadRequest):
        load_model(write_mmar(tmp_path, config), "broken")
