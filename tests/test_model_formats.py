"""MMAR configs (v4 and v2/v3) and their weights → served models: what loads, what runs, what is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from server.imageio import to_array
from server.inference import run_model
from server.model_formats import load_model
from server.phantoms import make_phantom

HU_THRESHOLD = 40.0  # the threshold network's mask: voxels brighter than this, in the config's CT window
CT_WINDOW = {"a_min": -160.0, "a_max": 240.0, "b_min": 0.0, "b_max": 1.0, "clip": True}


class ThresholdNet(torch.nn.Module):
    """Background logit 0.5, foreground logit = the windowed intensity: argmax is `HU > HU_THRESHOLD`."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([0.0, 1.0]).reshape(2, 1, 1, 1, 1))
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
    if weights == "model.ts":
        torch.jit.script(module).save(str(path))
    elif weights == "model.pt":
        torch.save(module.state_dict(), path)
    elif weights == "model.onnx":
        torch.onnx.export(
            module,
            (torch.zeros(1, 1, 16, 16, 16),),
            str(path),
            dynamo=False,
            input_names=["image"],
            dynamic_axes={"image": {0: "b", 2: "x", 3: "y", 4: "z"}},
        )
    return folder


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(3, size=(64, 56, 40), spacing=(3.0, 2.5, 3.5), orientation="LPS")


def expected_mask(image) -> np.ndarray:
    return (to_array(image) > HU_THRESHOLD).astype(np.uint8)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float(np.logical_and(a, b).sum()) / float(a.astype(bool).sum() + b.astype(bool).sum())


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
