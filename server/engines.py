"""Inference engines: one network run by eager PyTorch, TorchScript or ONNX Runtime, on CPU or CUDA.

Every engine is a `torch.nn.Module` taking and returning tensors, so MONAI's inferers (simple, sliding
window) and MONAI Label's `BasicInferTask.run_inferer` call it like the eager network. Its `engine`
attribute names what really runs it (the model object's `engine` key).

`auto` picks the fastest measured here (bench/engines.py): ONNX Runtime on CPU (about 5× eager PyTorch
for the app's UNets on 2 cores), eager PyTorch on CUDA. Exported files are cached next to the weights,
keyed by a hash of the weights and of the network definition, so a new checkpoint re-exports by itself.

Before each forward an engine calls the current thread's yield hook (`yield_hook`): the scheduler uses
it to pause a full-volume segmentation between sliding-window patches while a click is being answered.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

AUTO = "auto"
ENGINES = ("torch", "torchscript", "onnxruntime")
CACHE_FOLDER = ".engines"  # under the weights' folder (git-ignored)
ONNX_OPSET = 17

_thread = threading.local()


def cpu_threads() -> int:
    """Cores this process may run on (the container's share, not the host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def check_engine(name: str) -> str:
    """A valid engine name (or `auto`), else ValueError naming the choices."""
    name = (name or AUTO).strip().lower()
    if name not in (AUTO, *ENGINES):
        raise ValueError(f"unknown engine '{name}'; choose one of: {AUTO}, {', '.join(ENGINES)}")
    return name


def resolve_engine(name: str, device: str = "cpu") -> str:
    """The engine `name` stands for on `device`: `auto` → ONNX Runtime on CPU, eager PyTorch on CUDA."""
    name = check_engine(name)
    if name != AUTO:
        return name
    if str(device).startswith("cuda"):
        return "torch"
    return "onnxruntime" if onnxruntime_available() else "torch"


# ------------------------------------------------------------------------------------------ yielding


@contextlib.contextmanager
def yield_hook(hook: Callable[[], None]) -> Iterator[None]:
    """Call `hook` before every engine forward run by this thread while the block runs."""
    previous = getattr(_thread, "hook", None)
    _thread.hook = hook
    try:
        yield
    finally:
        _thread.hook = previous


def before_forward() -> None:
    hook = getattr(_thread, "hook", None)
    if hook is not None:
        hook()


# ------------------------------------------------------------------------------------------- engines


class Engine(torch.nn.Module):
    """A network ready to infer: tensors in, tensors out, no gradients; `engine` says what runs it."""

    engine = "torch"

    def forward(self, x: torch.Tensor):
        before_forward()
        if hasattr(x, "as_tensor"):  # MONAI MetaTensor: its metadata is not needed inside the network
            x = x.as_tensor()
        return self.run(x)

    def run(self, x: torch.Tensor):
        raise NotImplementedError


class TorchModule(Engine):
    """An eager or TorchScript module, in eval mode, run without gradients."""

    def __init__(self, module: torch.nn.Module, engine: str = "torch"):
        super().__init__()
        self.module = module.eval()
        self.engine = engine

    def run(self, x: torch.Tensor):
        with torch.no_grad():
            return self.module(x)


_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
}


class OnnxModule(Engine):
    """An ONNX model run by ONNX Runtime, callable like the torch network it came from.

    `model` is a path or the file's bytes. One input (batch-first tensor); one output comes back as a
    tensor, several as a tuple. `threads` defaults to the cores present; several requests may run the
    same session at once (ONNX Runtime sessions are thread-safe), sharing its thread pool.
    """

    engine = "onnxruntime"

    def __init__(self, model: str | os.PathLike | bytes, threads: int | None = None, device: str = "cpu"):
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or cpu_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Concurrent requests share the cores: threads that spin while idle would steal them.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, options, providers=providers)
        self.input = self.session.get_inputs()[0]
        self.input_dtype = _ORT_DTYPES.get(self.input.type, np.float32)
        self.device = torch.device(device)

    def run(self, x: torch.Tensor):
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=self.input_dtype)
        outputs = [torch.from_numpy(o).to(self.device) for o in self.session.run(None, {self.input.name: array})]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


# ------------------------------------------------------------------------------------------- exports


def export_onnx(network: torch.nn.Module, example: torch.Tensor, target: str | os.PathLike | io.BytesIO) -> None:
    """Export with batch and spatial axes dynamic, so one file serves any crop or patch size."""
    axes = {0: "batch", **{i: f"dim{i}" for i in range(2, example.ndim)}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter's deprecation notes
        torch.onnx.export(
            network.eval(),
            (example,),
            target,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": axes, "output": axes},
            opset_version=ONNX_OPSET,
            dynamo=False,
        )


def export_torchscript(network: torch.nn.Module, example: torch.Tensor, target: str | os.PathLike) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        scripted = torch.jit.freeze(torch.jit.trace(network.eval(), example))
    torch.jit.save(scripted, str(target))


def cache_key(network: torch.nn.Module, weights: str | os.PathLike | None) -> str:
    """Hash of the weights file and the network's definition: a changed checkpoint gets a new export."""
    digest = hashlib.sha256(repr(network).encode())
    if weights and Path(weights).is_file():
        with open(weights, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    digest.update(torch.__version__.encode())
    return digest.hexdigest()[:16]


def build_engine(
    network: torch.nn.Module,
    engine: str,
    example_shape: Sequence[int],
    *,
    device: str = "cpu",
    weights: str | os.PathLike | None = None,
    name: str = "model",
    threads: int | None = None,
) -> Engine:
    """`network` (weights loaded) as the engine `engine` (resolved from `auto`) on `device`.

    `example_shape` is one input (channels first, no batch) used to trace/export. Exports go to
    `<weights folder>/.engines/<name>-<key>.<ext>` when that folder is writable, else stay in memory.
    """
    engine = resolve_engine(engine, device)
    network = network.eval().to(torch.device(device))
    if engine == "torch":
        return TorchModule(network)
    example = torch.rand(1, *example_shape, device=torch.device(device))
    cached = _cache_path(network, weights, name, engine)
    if engine == "onnxruntime":
        if cached is None:
            buffer = io.BytesIO()
            export_onnx(network.cpu(), example.cpu(), buffer)
            return OnnxModule(buffer.getvalue(), threads=threads, device=device)
        _export_once(cached, lambda tmp: export_onnx(network.cpu(), example.cpu(), tmp))
        return OnnxModule(cached, threads=threads, device=device)
    if cached is None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            return TorchModule(torch.jit.freeze(torch.jit.trace(network, example)), engine="torchscript")
    _export_once(cached, lambda tmp: export_torchscript(network, example, tmp))
    return TorchModule(torch.jit.load(str(cached), map_location=torch.device(device)), engine="torchscript")


def _cache_path(network: torch.nn.Module, weights, name: str, engine: str) -> Path | None:
    if not weights:
        return None
    folder = Path(weights).parent / CACHE_FOLDER
    try:
        folder.mkdir(exist_ok=True)
    except OSError:
        return None
    if not os.access(folder, os.W_OK):
        return None
    suffix = ".onnx" if engine == "onnxruntime" else ".ts"
    return folder / f"{name}-{cache_key(network, weights)}{suffix}"


def _export_once(path: Path, export: Callable[[Path], None]) -> None:
    """Write the export to a temp name and rename it, so a reader never sees half a file."""
    if path.is_file():
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        export(tmp)
        os.replace(tmp, path)
        logger.info("exported %s", path)
        stem = path.name.rsplit("-", 1)[0]
        for stale in path.parent.glob(f"{stem}-*{path.suffix}"):  # exports of earlier weights
            if stale != path:
                stale.unlink(missing_ok=True)
    finally:
        tmp.unlink(missing_ok=True)
