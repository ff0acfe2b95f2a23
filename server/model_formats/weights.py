"""Model weights from an upload, loaded without ever running code from it.

`.ts` (and a `.pt` that is a TorchScript archive) → its code checked (`torchscript.check_archive`: tensor
math only, `__setstate__` included), then `torch.jit.load`, then its compiled graphs checked again before
any forward; any other `.pt` → a state dict through `torch.load(weights_only=True)` (a pickle that would
call anything is refused before it runs) into an allow-listed network; `.onnx` → its graph checked
(`onnx_graph.check_onnx`: ONNX's own operators, no external data), then ONNX Runtime on the CPU.
"""

from __future__ import annotations

import zipfile
from abc import ABC, abstractmethod
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


class WeightsFormat(ABC):
    """One kind of weights file: recognised by its name and bytes, loaded (checked first) as an engine."""

    engine: EngineName  # what runs it as uploaded

    @abstractmethod
    def detect(self, path: Path) -> bool:
        """Is `path` a file of this kind?"""

    @abstractmethod
    def load(self, path: Path, network: Callable[[], torch.nn.Module] | None) -> torch.nn.Module:
        """The checked file as one of `aiaa_core.engines`' modules (a 400 names what is wrong)."""


class OnnxWeights(WeightsFormat):
    """`.onnx`: its graph checked (ONNX's own operators, no external data), then ONNX Runtime on the CPU."""

    engine = EngineName.ONNXRUNTIME

    def detect(self, path: Path) -> bool:
        return path.suffix.lower() == ".onnx"

    def load(self, path: Path, network) -> torch.nn.Module:
        check_onnx(path)
        try:
            return OnnxModule(path)
        except Exception as error:  # noqa: BLE001 - a broken graph is the upload's fault
            raise BadRequest(f"models/{path.name} is not a loadable ONNX model: {error}") from None


class TorchScriptWeights(WeightsFormat):
    """`.ts`, or a `.pt` that is a TorchScript archive: code checked, loaded, graphs checked again."""

    engine = EngineName.TORCHSCRIPT

    def detect(self, path: Path) -> bool:
        return path.suffix.lower() == ".ts" or is_torchscript(path)

    def load(self, path: Path, network) -> torch.nn.Module:
        check_archive(path)  # before loading: `torch.jit.load` runs the archive's `__setstate__` methods
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as error:  # noqa: BLE001 - a broken archive is the upload's fault
            raise BadRequest(f"models/{path.name} is not a loadable TorchScript file: {error}") from None
        check_loaded(path, module)
        return TorchModule(module, EngineName.TORCHSCRIPT)


class StateDictWeights(WeightsFormat):
    """Any other file: a state dict (`torch.load(weights_only=True)`) into the config's allow-listed network."""

    engine = EngineName.TORCH

    def detect(self, path: Path) -> bool:
        return True

    def load(self, path: Path, network) -> torch.nn.Module:
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
        return TorchModule(module)


WEIGHTS_FORMATS = (OnnxWeights(), TorchScriptWeights(), StateDictWeights())  # the first that detects the file


def load_weights(path: Path, network: Callable[[], torch.nn.Module] | None) -> tuple[torch.nn.Module, str]:
    """The network as one of `aiaa_core.engines`' modules (CPU, no gradients) and its engine name
    (`torchscript`, `torch`, `onnxruntime`). `network` builds the config's network (a state dict needs it)."""
    kind = next(f for f in WEIGHTS_FORMATS if f.detect(path))
    return kind.load(path, network), kind.engine
