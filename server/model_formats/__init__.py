"""Uploaded model folders (Clara MMAR, MONAI bundle) → served models, without running code from them.

Each format is a `ModelFormatHandler` (`base`): `handler(fmt)` for a folder whose marker names its
format, `detect(folder)` for an upload, `load_model` for both at once (tests, benchmarks). An uploaded
folder is an unpacked archive in canonical layout: MMAR (`config/config_aiaa.json`,
`models/model.ts|pt|onnx`) or MONAI bundle (`configs/inference.json|yaml`, `configs/metadata.json`,
`models/model.pt|ts`); the app's models (`app`) are built by the app's own code. Anything wrong is a
`BadRequest` naming it.

An upload is untrusted even from an admin: it may run nothing but tensor math. `names` judges each class
a config names by the object the name resolves to (MONAI's aliases included), `arguments` checks every
argument against that class's signature (data only: no code, classes or paths), `bundle` builds a
bundle's config itself, `torchscript` checks TorchScript code before `torch.jit.load` runs any of it
(`__setstate__` included) and its graphs after, `onnx_graph` checks ONNX domains and external data, and
state dicts load with `weights_only=True` (`weights`). Uploads then take the app's fast path
(`fast_path`: a faster engine when it matches the upload within a checked tolerance, pre-processing
cached per session). The registry loads every installed model through here at start-up, so a model
installed under older rules is held to today's.
"""

from __future__ import annotations

from pathlib import Path

from aiaa_core.engines import EngineSettings
from aiaa_core.vocabularies import ModelFormat

from ..errors import BadRequest
from ..served_model import ServedModel
from .app import AppFormat
from .base import LoadContext, ModelFormatHandler
from .bundle import BundleFormat
from .mmar import MmarFormat

__all__ = ["FORMATS", "LoadContext", "ModelFormatHandler", "detect", "handler", "load_model"]

FORMATS: dict[ModelFormat, ModelFormatHandler] = {h.format: h for h in (MmarFormat(), BundleFormat(), AppFormat())}
UPLOADED = (FORMATS[ModelFormat.MMAR], FORMATS[ModelFormat.BUNDLE])  # detected in this order


def handler(fmt: str) -> ModelFormatHandler:
    """The handler of a format named in a marker (ValueError for a name this server does not know)."""
    return FORMATS[ModelFormat(fmt)]


def detect(folder: Path) -> ModelFormatHandler:
    """The handler of an uploaded model folder, by its files (a 400 when it is none of the formats)."""
    for candidate in UPLOADED:
        if candidate.detect(folder):
            candidate.validate(folder)
            return candidate
    raise BadRequest(
        "Not a model folder: expected config/config_aiaa.json (MMAR) or configs/inference.json|yaml "
        "with configs/metadata.json (MONAI bundle)."
    )


def load_model(folder: Path, name: str, device: str = "cpu", engines: EngineSettings | None = None) -> ServedModel:
    """Build an uploaded model's task (allow-listed transforms, inferer, weights on the CPU) and its model entry.

    The network runs as uploaded until its task's `warm_up` chooses the engine (`fast_path`); each request
    names its device and the network is copied there on first use.
    """
    folder = Path(folder)
    return detect(folder).build(folder, name, LoadContext(device=device, engines=engines or EngineSettings()))
