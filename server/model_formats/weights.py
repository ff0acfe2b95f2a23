"""Model weights from an upload, loaded without ever running code from it.

`.ts` (and a `.pt` that is a TorchScript archive) → its code checked (`torchscript.check_archive`: tensor
math only, `__setstate__` included), then `torch.jit.load`, then its compiled graphs checked again before
any forward; any other `.pt` → a state dict through `torch.load(weights_only=True)` (a pickle that would
call anything is refused before it runs) into an allow-listed network; `.onnx` → its graph checked
(`onnx_graph.check_onnx`: ONNX's own operators, no external data), then ONNX Runtime on the CPU.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import torch

from aiaa_core.engines import OnnxModule, TorchModule
from aiaa_core.vocabularies import EngineName
from aiaa_core.weights import WeightsRefused, load_state_dict

from ..errors import BadRequest
from .onnx_graph import check_onnx
from .torchscript import check_archive, check_loaded

WEIGHT_FILES = ("model.ts", "model.pt", "model.onnx")


def find_weights(models_dir: Path) -> Path:
    """The first of models/model.ts, model.pt, model.onnx that exists."""
    for name in WEIGHT_FILES:
        if (models_dir / name).is_file():
            return models_dir / name
    raise BadRequest(f"No model weights: expected one of {', '.join('models/' + n for n in WEIGHT_FILES)}.")


def is_torchscript(path: Path) -> bool:
    """A TorchScript archive is a zip with `code/` and `constants.pkl`; a `torch.save` file has neither."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def load_weights(path: Path, network: Callable[[], torch.nn.Module] | None) -> tuple[torch.nn.Module, str]:
    """The network as one of `aiaa_core.engines`' modules (CPU, no gradients, the scheduler's yield hook)
    and its engine name (`torchscript`, `torch`, `onnxruntime`).

    `network` builds the config's network; it is needed only for a state dict.
    """
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        check_onnx(path)
        try:
            return OnnxModule(path), EngineName.ONNXRUNTIME
        except Exception as error:  # noqa: BLE001 - a broken graph is the upload's fault
            raise BadRequest(f"models/{path.name} is not a loadable ONNX model: {error}") from None
    if suffix == ".ts" or is_torchscript(path):
        check_archive(path)  # before loading: `torch.jit.load` runs the archive's `__setstate__` methods
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as error:  # noqa: BLE001 - a broken archive is the upload's fault
            raise BadRequest(f"models/{path.name} is not a loadable TorchScript file: {error}") from None
        check_loaded(path, module)
        return TorchModule(module, EngineName.TORCHSCRIPT), EngineName.TORCHSCRIPT
    if network is None:
        raise BadRequest(
            f"models/{path.name} is a state dict, so the config must name its network "
            "(a 'network' section with a monai.networks.nets class)."
        )
    try:
        state = load_state_dict(path)
    except WeightsRefused as error:
        raise BadRequest(str(error)) from None
    module = network()
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).strip().splitlines()[0]
        raise BadRequest(f"models/{path.name} does not fit the config's network: {first}") from None
    return TorchModule(module), EngineName.TORCH

