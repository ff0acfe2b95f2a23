"""Clara MMAR configs (`config/config_aiaa.json`): v4 (PyTorch era, MONAI names) and v2/v3 (TensorFlow era).

Both become a `TaskSpec`: allow-listed transforms built with the config's args, an inferer from the
`inference` section, and the model entry (type, labels, description, version as a string, meta data).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import torch
from monai.inferers import Inferer, SimpleInferer, SlidingWindowInferer

from aiaa_core.vocabularies import SERVABLE_TYPES, ModelFormat, ModelType

from ..errors import BadRequest
from . import legacy, names
from .arguments import check_value
from .base import LoadContext, ModelFormatHandler
from .task import TaskSpec, configured_model

logger = logging.getLogger(__name__)

MODEL_TYPES = SERVABLE_TYPES  # what an MMAR or a bundle may declare
CONFIG_FILE = Path("config") / "config_aiaa.json"


def read_config(folder: Path) -> dict:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise BadRequest(f"No {CONFIG_FILE.as_posix()} in the model archive.")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BadRequest(f"{CONFIG_FILE.as_posix()} is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise BadRequest(f"{CONFIG_FILE.as_posix()} must hold a JSON object.")
    return config


def config_version(config: dict) -> str:
    """The config's major version, "2", "3" or "4": its `version` field when that says, else 4 when the
    transforms carry `monai.`/`aiaa.` names."""
    version = str(config.get("version", "")).strip()
    major = version.split(".")[0]
    if major in ("2", "3", "4"):
        return major
    steps = [
        s for key in ("pre_transforms", "post_transforms") if isinstance(config.get(key), list) for s in config[key]
    ]
    modern = any(isinstance(s, dict) and str(s.get("name", "")).startswith(("monai.", "aiaa.")) for s in steps)
    return "4" if modern else "3"


def read_mmar(folder: Path) -> tuple[TaskSpec, Callable[[], torch.nn.Module] | None]:
    """The task spec of an MMAR folder and, when its config names one, a builder for its network."""
    config = read_config(folder)
    if not isinstance(config.get("version", ""), (str, int, float)):
        raise BadRequest("'version' must be a string or a number.")
    version = config_version(config)
    inference = config.get("inference") or {}
    if not isinstance(inference, dict):
        raise BadRequest("'inference' must be a JSON object.")
    model_type = str(config.get("type", ModelType.SEGMENTATION)).lower()
    if model_type not in MODEL_TYPES:
        raise BadRequest(f"Model type '{model_type}' is not served here; supported: {', '.join(MODEL_TYPES)}.")
    if version == "4":
        pre = build_transforms(config.get("pre_transforms"), "pre_transforms")
        post = build_transforms(config.get("post_transforms"), "post_transforms")
        input_key, output_key = inference.get("input", "image"), inference.get("output", "pred")
        extra = inference.get("meta_data", config.get("meta_data")) or {}
    else:
        pre, post, output_key = legacy.build_pipeline(config, inference)
        input_key = inference.get("image", "image")
        extra = inference.get("additional_info", config.get("additional_info")) or {}
    if "writer" in config:
        names.check_writer(config["writer"])
    if not isinstance(extra, dict):
        raise BadRequest("'meta_data' / 'additional_info' must be a JSON object.")
    spec = TaskSpec(
        type=model_type,
        labels=read_labels(config.get("labels", [])),
        description=str(config.get("description") or f"{model_type} model (MMAR v{version})"),
        version=str(config.get("version", version)),
        pre_transforms=pre,
        inferer=build_inferer(inference),
        post_transforms=post,
        input_key=str(input_key),
        output_key=str(output_key),
        model_info=model_info(config, model_type, extra),
    )
    return spec, network_builder(config.get("network", inference.get("network")))


def read_labels(labels) -> list[str]:
    """A list of names, or AIAA's {"name": value} dict (ordered by value)."""
    if isinstance(labels, dict):
        labels = [name for name, _ in sorted(labels.items(), key=lambda item: item[1])]
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise BadRequest("'labels' must be a list of label names.")
    return labels


def model_info(config: dict, model_type: str, extra: dict) -> dict:
    """The type-specific keys of the model object (contract section 2) plus the config's meta data."""
    info = {}
    if model_type == ModelType.ANNOTATION:
        info = {"padding": config.get("padding", 20), "roi": config.get("roi", [128, 128, 128])}
        if "sigma" in config:
            info["sigma"] = config["sigma"]
    elif model_type == ModelType.DEEPGROW:
        info = {"deepgrow": str(config.get("deepgrow", f"{config.get('dimension', 3)}D"))}
    return {**info, **extra}


def build_transforms(steps, where: str) -> list[Callable]:
    """v4 steps → transform instances (dropped names leave no step)."""
    transforms = []
    for location, name, args in names.config_steps(steps, where):
        resolved = names.resolve_transform(name)
        if resolved.cls is not None:
            transforms.append(names.build(resolved, args, location))
    return transforms


def build_inferer(inference: dict) -> Inferer:
    """The `AIAA` section (`aiaa.inference.PyTorchInference` or a `monai.inferers` class) → an inferer.

    Clara 3's top-level `name`/`args` read the same way. `TRITON` is ignored: the server runs the model
    itself. Devices come from the server, so a config's `"cuda"` runs on the CPU when there is no GPU.
    """
    if "TRITON" in inference:
        logger.info("config's TRITON section ignored: this server runs the model in-process")
    section = inference.get("AIAA") or {k: inference[k] for k in ("name", "args") if k in inference}
    if not isinstance(section, dict):
        raise BadRequest("inference.AIAA must be a JSON object.")
    name, args = str(section.get("name", "aiaa.inference.PyTorchInference")), section.get("args") or {}
    if not isinstance(args, dict):
        raise BadRequest("inference.AIAA.args must be a JSON object.")
    check_value(args, "inference.AIAA.args")
    for key in ("device", "sw_device"):
        if str(args.get(key, "")).startswith("cuda") and not torch.cuda.is_available():
            logger.info("config asks for %s=%s; no GPU here, running on the CPU", key, args[key])
    if name.rpartition(".")[2] in ("PyTorchInference", "TRTISInference", "TFInference", "TritonInference"):
        if not args.get("scanning_window"):
            return SimpleInferer()
        roi = args.get("roi") or args.get("roi_size")
        if not isinstance(roi, list) or not roi or not all(isinstance(n, int) and n > 0 for n in roi):
            raise BadRequest("inference.AIAA.args: 'scanning_window' needs 'roi', the window size in voxels.")
        try:
            return SlidingWindowInferer(
                roi_size=roi,
                overlap=float(args.get("overlap", 0.25)),
                sw_batch_size=int(args.get("sw_batch_size", args.get("batch_size", 1))),
                mode=args.get("mode", "constant"),
            )
        except Exception as error:  # noqa: BLE001
            raise BadRequest(f"inference.AIAA.args are not valid for a sliding window: {error}") from None
    cls = names.resolve_inferer(name)
    args = {k: v for k, v in args.items() if k not in ("device", "sw_device")}
    return names.build(names.Resolved(name, cls), args, "inference.AIAA")


def network_builder(section) -> Callable[[], torch.nn.Module] | None:
    """`{"name": "monai.networks.nets.UNet", "args": {...}}` → a builder (checked now, built on demand)."""
    if section is None:
        return None
    if not isinstance(section, dict) or "name" not in section:
        raise BadRequest("'network' must be an object with 'name' (a monai.networks.nets class) and 'args'.")
    cls = names.resolve_network(section["name"])
    resolved = names.Resolved(section["name"], cls)
    args = section.get("args") or {}
    return lambda: names.build(resolved, args, "network")


class MmarFormat(ModelFormatHandler):
    """A Clara MMAR: `config/config_aiaa.json` and `models/model.ts|pt|onnx`."""

    format = ModelFormat.MMAR

    def detect(self, folder: Path) -> bool:
        return (folder / CONFIG_FILE).is_file()

    def validate(self, folder: Path) -> None:
        if not self.detect(folder):
            raise BadRequest(f"No {CONFIG_FILE.as_posix()} in the model archive.")

    def build(self, folder: Path, name: str, context: LoadContext):
        spec, network = read_mmar(folder)
        return configured_model(folder, name, self.format, spec, network, context.engines)

    def config_file(self, folder: Path) -> Path:
        return folder / CONFIG_FILE
