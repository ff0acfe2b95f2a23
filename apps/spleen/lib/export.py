"""Export the app's models as a Clara MMAR (v4 `config_aiaa.json` + TorchScript) or a MONAI bundle zip.

The exported pipeline is read off the app's own task (its pre-transforms, inferer and post-transforms,
instance by instance), never written a second time: a transform this module cannot describe stops the
export. The app's transforms are named `aiaa.transforms.<Class>`, which the server's allow-list maps to
these same classes (a stock Clara/MONAI host does not have them). The server's v4 and bundle readers
(`server/model_formats`) load the result and give the same masks as the app (tests/test_export.py).
Exported click models infer on one crop: the app's zoom-out pass (`lib/infers/interactive.py`) is
the app task's own loop, not a transform, so a generic host runs the first pass only.
"""

from __future__ import annotations

import inspect
import io
import json
import zipfile
from pathlib import Path

import torch
from monai.inferers import Inferer, SimpleInferer, SlidingWindowInferer
from monai.networks.nets import UNet
from monai.transforms import (
    AsDiscreted,
    EnsureTyped,
    KeepLargestConnectedComponentd,
    Orientationd,
    ScaleIntensityRanged,
    Spacingd,
)
from monailabel.tasks.infer.basic_infer import BasicInferTask

from aiaa_core import __version__
from aiaa_core import transforms as app_transforms
from aiaa_core.engines import EXPORT_LOCK
from aiaa_core.vocabularies import UPLOAD_FORMATS, EngineName, ModelFormat
from aiaa_core.weights import load_state_dict
from lib.configs import load_configs
from lib.infers.interactive import KeepUncroppedd

FORMATS = UPLOAD_FORMATS
OWN = "aiaa.transforms."  # the prefix under which the server's allow-list knows the app's transforms


def _keys(t) -> str | list[str]:
    keys = list(t.keys)
    return keys[0] if len(keys) == 1 else keys


def describe_transform(t) -> tuple[str, dict] | None:
    """(name, args) of one of the app's transform instances; None for the final `RestoreGeometryd`,
    which the server's reader appends to every pipeline itself."""
    if isinstance(t, app_transforms.RestoreGeometryd):
        return None
    if isinstance(t, KeepUncroppedd):  # bookkeeping for the app's zoom-out pass, which a generic host does not run
        return None
    if isinstance(t, app_transforms.LoadImageOrTensord):
        return "monai.transforms.LoadImaged", {"keys": _keys(t), "ensure_channel_first": True}
    if type(t).__name__ in app_transforms.__all__ and isinstance(t, getattr(app_transforms, type(t).__name__)):
        return OWN + type(t).__name__, own_args(t)
    keys = {"keys": _keys(t)}
    if isinstance(t, Orientationd):
        return "monai.transforms.Orientationd", {**keys, "axcodes": t.ornt_transform.axcodes}
    if isinstance(t, Spacingd):
        pixdim = [float(p) for p in t.spacing_transform.pixdim]
        return "monai.transforms.Spacingd", {**keys, "pixdim": pixdim, "mode": list(t.mode)}
    if isinstance(t, ScaleIntensityRanged):
        window = {k: getattr(t.scaler, k) for k in ("a_min", "a_max", "b_min", "b_max", "clip")}
        return "monai.transforms.ScaleIntensityRanged", {**keys, **window}
    if isinstance(t, EnsureTyped):
        dtype = t.dtype[0] if isinstance(t.dtype, tuple) else t.dtype
        dtype = None if dtype is None else str(dtype)
        return "monai.transforms.EnsureTyped", {**keys, "dtype": dtype, "data_type": t.converter.data_type}
    if isinstance(t, AsDiscreted):
        return "monai.transforms.AsDiscreted", {**keys, "argmax": t.argmax[0], "threshold": t.threshold[0]}
    if isinstance(t, KeepLargestConnectedComponentd):
        labels = t.converter.applied_labels
        return "monai.transforms.KeepLargestConnectedComponentd", {
            **keys,
            "applied_labels": None if labels is None else list(labels),
            "independent": t.converter.independent,
        }
    raise ValueError(f"cannot export transform {type(t).__name__}: teach lib/export.py its arguments")


def own_args(t) -> dict:
    """The constructor arguments of one of the app's transforms, which keep each under the same name."""
    args = {}
    for name, parameter in inspect.signature(type(t)).parameters.items():
        value = list(t.keys) if name == "keys" else getattr(t, name, parameter.default)
        if value is inspect.Parameter.empty:
            raise ValueError(f"cannot export {type(t).__name__}: it does not keep its argument '{name}'")
        args[name] = list(value) if isinstance(value, tuple) else value
    return args


def describe_inferer(inferer: Inferer) -> tuple[str, dict]:
    if isinstance(inferer, SlidingWindowInferer):
        return "monai.inferers.SlidingWindowInferer", {
            "roi_size": [int(s) for s in inferer.roi_size],
            "sw_batch_size": inferer.sw_batch_size,
            "overlap": inferer.overlap,
            "mode": str(getattr(inferer.mode, "value", inferer.mode)),
        }
    if isinstance(inferer, SimpleInferer):
        return "monai.inferers.SimpleInferer", {}
    raise ValueError(f"cannot export inferer {type(inferer).__name__}")


def describe_network(network: torch.nn.Module) -> tuple[str, dict]:
    if not isinstance(network, UNet):
        raise ValueError(f"cannot export network {type(network).__name__}")
    names = ("in_channels", "out_channels", "channels", "strides", "kernel_size", "up_kernel_size", "num_res_units")
    args = {"spatial_dims": network.dimensions, **{n: getattr(network, n) for n in names}}
    args.update(act=network.act, norm=network.norm, dropout=network.dropout, bias=network.bias)
    return "monai.networks.nets.UNet", json.loads(json.dumps(args))  # tuples → lists


def pipeline(task: BasicInferTask) -> tuple[list, list]:
    """The task's pre- and post-transforms as (name, args); logits inverted by MONAI Label's
    `inverse_transforms` become AIAA's `Restored` (with the forward interpolation modes) first."""
    pre = [d for t in task.pre_transforms(None) if (d := describe_transform(t))]
    post = [d for t in task.post_transforms(None) if (d := describe_transform(t))]
    if task.inverse_transforms(None) is not None:
        restored = {"keys": task.output_label_key, "ref_image": task.input_key, "nearest_interp": False}
        post.insert(0, (OWN + "Restored", restored))
    return pre, post


def model_entry(task: BasicInferTask) -> dict:
    task_type = getattr(task.type, "value", task.type)
    labels = task.labels
    if isinstance(labels, dict):
        labels = [name for name, _ in sorted(labels.items(), key=lambda item: item[1])]
    return {"type": str(task_type), "labels": list(labels or []), "description": task.description}


def mmar_config(task: BasicInferTask) -> dict:
    """A Clara v4 `config_aiaa.json` for the task."""
    pre, post = pipeline(task)
    inferer_name, inferer_args = describe_inferer(task.inferer(None))
    aiaa_args = {"scanning_window": inferer_name.endswith("SlidingWindowInferer")}
    if aiaa_args["scanning_window"]:
        aiaa_args.update(
            roi=inferer_args["roi_size"],
            overlap=inferer_args["overlap"],
            sw_batch_size=inferer_args["sw_batch_size"],
            mode=inferer_args["mode"],
        )
    return {
        "version": __version__,
        **model_entry(task),
        "pre_transforms": [{"name": n, "args": a} for n, a in pre],
        "inference": {
            "input": task.input_key,
            "output": task.output_label_key,
            "AIAA": {"name": "aiaa.inference.PyTorchInference", "args": aiaa_args},
            "meta_data": getattr(task, "model_info", {}),
        },
        "post_transforms": [{"name": n, "args": a} for n, a in post],
        "writer": {"name": "aiaa.transforms.Writer", "args": {"image": task.output_label_key, "json": "result"}},
    }


def bundle_configs(task: BasicInferTask, network: torch.nn.Module) -> tuple[dict, dict]:
    """A MONAI bundle's `configs/inference.json` and `configs/metadata.json` for the task."""
    pre, post = pipeline(task)
    network_name, network_args = describe_network(network)
    inferer_name, inferer_args = describe_inferer(task.inferer(None))
    inference = {
        "bundle_root": ".",
        "network_def": {"_target_": network_name, **network_args},
        "preprocessing": {"_target_": "Compose", "transforms": [{"_target_": n, **a} for n, a in pre]},
        "inferer": {"_target_": inferer_name, **inferer_args},
        "postprocessing": {"_target_": "Compose", "transforms": [{"_target_": n, **a} for n, a in post]},
    }
    entry = model_entry(task)
    channels = {"0": "background", **{str(i + 1): name for i, name in enumerate(entry["labels"])}}
    metadata = {
        "version": __version__,
        "description": entry["description"],
        "type": entry["type"],
        **getattr(task, "model_info", {}),
        "network_data_format": {
            "inputs": {"image": {"type": "image", "num_channels": network_args["in_channels"]}},
            "outputs": {
                "pred": {"type": "image", "num_channels": network_args["out_channels"], "channel_def": channels}
            },
        },
    }
    return inference, metadata


def app_model(app_dir: Path, name: str) -> tuple[BasicInferTask, torch.nn.Module]:
    """The app's task (eager engine) and its network with the weights of `model/<name>.pt` loaded."""
    model_dir = Path(app_dir) / "model"
    config = load_configs(str(model_dir), {"models": name, "engine": EngineName.TORCH})[name]
    weights = model_dir / f"{name}.pt"
    if not weights.is_file():
        raise FileNotFoundError(f"no weights at {weights} (run `aiaa train {name}`)")
    network = config.network
    network.load_state_dict(load_state_dict(weights))
    return config.infer(), network.eval()


def torchscript_bytes(network: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    with EXPORT_LOCK:  # scripting parses Python source: not safe beside another thread's
        scripted = torch.jit.script(network.eval())
    torch.jit.save(scripted, buffer)
    return buffer.getvalue()


def export_model(app_dir: Path, name: str, fmt: str, out_dir: Path) -> Path:
    """Write `<out_dir>/<name>-<fmt>.zip`: an MMAR (config + TorchScript) or a bundle (configs + state dict)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format '{fmt}'; choose one of {', '.join(FORMATS)}")
    task, network = app_model(app_dir, name)
    if fmt == ModelFormat.MMAR:
        files = {
            "config/config_aiaa.json": json.dumps(mmar_config(task), indent=2).encode(),
            "models/model.ts": torchscript_bytes(network),
        }
    else:
        inference, metadata = bundle_configs(task, network)
        state = io.BytesIO()
        torch.save(network.state_dict(), state)
        files = {
            "configs/inference.json": json.dumps(inference, indent=2).encode(),
            "configs/metadata.json": json.dumps(metadata, indent=2).encode(),
            "models/model.pt": state.getvalue(),
        }
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name}-{fmt}.zip"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return target
