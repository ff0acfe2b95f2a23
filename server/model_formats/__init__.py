"""Uploaded model folders (Clara MMAR, MONAI bundle) → served models, without running code from them.

`load_model` is the registry's one entry point. The folder is an unpacked archive in canonical layout:
MMAR (`config/config_aiaa.json`, `models/model.ts|pt|onnx`) or MONAI bundle (`configs/inference.json|yaml`,
`configs/metadata.json`, `models/model.pt|ts`). Anything wrong is a `BadRequest` naming it.

An upload is untrusted even from an admin: it may run nothing but tensor math. `names` judges each class
a config names by the object the name resolves to (MONAI's aliases included), `arguments` checks every
argument against that class's signature (data only: no code, classes or paths), `bundle` builds a
bundle's config itself, `torchscript` checks TorchScript code before `torch.jit.load` runs any of it
(`__setstate__` included) and its graphs after, `onnx_graph` checks ONNX domains and external data, and
state dicts load with `weights_only=True` (`weights`). The registry loads every installed model through
here at start-up, so a model installed under older rules is held to today's.
"""

from __future__ import annotations

from pathlib import Path

from aiaa_core.vocabularies import ModelFormat

from ..errors import BadRequest
from ..registry import ServedModel
from .mmar import CONFIG_FILE, read_mmar
from .task import ConfiguredTask
from .weights import find_weights, load_weights

__all__ = ["load_model"]


def load_model(folder: Path, name: str, device: str = "cpu") -> ServedModel:
    """Build the model's task (allow-listed transforms, inferer, weights on the CPU) and its model entry.

    `device` is accepted for the registry's call; each request names its device and the network is
    copied there on first use (`ConfiguredTask._get_network`).
    """
    folder = Path(folder)
    if (folder / CONFIG_FILE).is_file():
        spec, network = read_mmar(folder)
        source = ModelFormat.MMAR
    elif (folder / "configs").is_dir():
        from .bundle import read_bundle

        spec, network = read_bundle(folder)
        source = ModelFormat.BUNDLE
    else:
        raise BadRequest(
            "Not a model folder: expected config/config_aiaa.json (MMAR) or configs/inference.json|yaml "
            "with configs/metadata.json (MONAI bundle)."
        )
    module, engine = load_weights(find_weights(folder / "models"), network)
    return ServedModel(name=name, task=ConfiguredTask(spec, module, engine), source=source, version=spec.version)
