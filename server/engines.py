"""Inference engines: one network run by eager PyTorch, TorchScript or ONNX Runtime, on CPU or CUDA.

Every engine is a `torch.nn.Module` taking and returning tensors, so MONAI's inferers (simple, sliding
window) and MONAI Label's `BasicInferTask.run_inferer` call it like the eager network. Its `engine`
attribute names what really runs it (the model object's `engine` key).

`auto` picks the fastest measured here (bench/engines.py): ONNX Runtime on CPU (for the app's UNets on
2 cores about 2× eager PyTorch when the machine is quiet, 3–7× when it is busy), eager PyTorch on CUDA.
Exported files are cached in one folder (`AIAA_ENGINE_CACHE`, default `~/.cache/aiaa/engines`), named
by a hash of the network's definition and weights: a new checkpoint re-exports by itself, and the same
weights in another model folder (the repository's copy of an app model, a test's fresh repository)
reuse the export.

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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from aiaa_core.vocabularies import EngineName

logger = logging.getLogger(__name__)

AUTO = EngineName.AUTO
ONNX_OPSET = 17
CACHE_LIMIT = 64  # exported files kept in the cache folder (least recently used removed first)


@dataclass
class EngineSettings:
    """The process-wide choices (`aiaa serve --engine/--model-engine/--inference-threads`)."""

    default: str = AUTO
    per_model: dict[str, str] = field(default_factory=dict)
    threads: int = 0  # per inference; 0: the cores present, shared out while several run
    cache_dir: Path = field(
        default_factory=lambda: Path(os.environ.get("AIAA_ENGINE_CACHE", "~/.cache/aiaa/engines")).expanduser()
    )


current = EngineSettings()
_thread = threading.local()


def configure(
    default: str = AUTO, per_model: dict[str, str] | None = None, threads: int = 0, cache_dir: Path | None = None
) -> None:
    """Set the process-wide engine choices; invalid names raise ValueError."""
    global current
    per_model = {name: check_engine(engine) for name, engine in (per_model or {}).items()}
    current = EngineSettings(check_engine(default), per_model, int(threads), *([Path(cache_dir)] if cache_dir else []))
    torch.set_num_threads(engine_threads())


def engine_threads() -> int:
    """Threads one inference may use: the setting, else the cores present (shared out while several run)."""
    return current.threads or cpu_threads()


_running = 0  # engine forwards in progress in this process
_running_lock = threading.Lock()


@contextlib.contextmanager
def threads_for_this_forward() -> Iterator[int]:
    """The threads a forward starting now gets: all of `engine_threads()` alone, an equal share otherwise.

    Measured on the 2-core target: a click alone is fastest on both cores (0.18 s against 0.24 s on one),
    but two clicks (or a click and a segmentation patch) on one core each finish together sooner than on
    two threads each, which would only fight over the cores.
    """
    global _running
    with _running_lock:
        _running += 1
        share = _running
    try:
        yield max(1, engine_threads() // share)
    finally:
        with _running_lock:
            _running -= 1


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


def check_engine(name: str) -> EngineName:
    """A valid engine name (or `auto`), else ValueError naming the choices."""
    name = (name or AUTO).strip().lower()
    if name not in tuple(EngineName):
        raise ValueError(f"unknown engine '{name}'; choose one of: {', '.join(EngineName)}")
    return EngineName(name)


def resolve_engine(name: str, device: str = "cpu", model: str | None = None) -> EngineName:
    """The engine that runs `model` on `device`.

    An explicit `name` (the model's own config) wins; `auto` defers to the server's per-model choice,
    then its default, then the fastest measured here: ONNX Runtime on CPU, eager PyTorch on CUDA.
    """
    name = check_engine(name)
    if name == AUTO:
        name = current.per_model.get(model or "", current.default)
    if name != AUTO:
        return EngineName(name)
    if str(device).startswith("cuda"):
        return EngineName.TORCH
    return EngineName.ONNXRUNTIME if onnxruntime_available() else EngineName.TORCH


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


def yield_point() -> None:
    """Call the current thread's yield hook, if any: a place where lower-priority work may pause."""
    hook = getattr(_thread, "hook", None)
    if hook is not None:
        hook()


# ------------------------------------------------------------------------------------------- engines


class Engine(torch.nn.Module):
    """A network ready to infer: tensors in, tensors out, no gradients; `engine` says what runs it."""

    engine = EngineName.TORCH

    def forward(self, x: torch.Tensor):
        yield_point()
        if hasattr(x, "as_tensor"):  # MONAI MetaTensor: its metadata is not needed inside the network
            x = x.as_tensor()
        with threads_for_this_forward() as threads:
            return self.run(x, threads)

    def run(self, x: torch.Tensor, threads: int):
        raise NotImplementedError


class TorchModule(Engine):
    """An eager or TorchScript module, in eval mode, run without gradients."""

    def __init__(self, module: torch.nn.Module, engine: str = EngineName.TORCH):
        super().__init__()
        self.module = module.eval()
        self.engine = engine

    def run(self, x: torch.Tensor, threads: int):  # PyTorch's threads are process-wide: left as configured
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
    tensor, several as a tuple. With `threads` every run uses that many; by default a run gets its share
    of the cores (`threads_for_this_forward`), from one session per thread count (made when first needed;
    ONNX Runtime sessions are thread-safe, so concurrent runs may share one).
    """

    engine = EngineName.ONNXRUNTIME

    def __init__(self, model: str | os.PathLike | bytes, threads: int | None = None, device: str = "cpu"):
        super().__init__()
        import onnxruntime as ort

        self.source = model if isinstance(model, bytes) else str(model)
        self.fixed_threads = threads
        self.providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            self.providers.insert(0, "CUDAExecutionProvider")
        self.device = torch.device(device)
        self._sessions: dict[int, object] = {}
        self._lock = threading.Lock()
        first = self.session(threads or engine_threads())  # fails here, at load, on a bad file
        if not threads:
            self.session(max(1, engine_threads() // 2))  # two at once, the common share, ready too
        self.input = first.get_inputs()[0]
        self.input_dtype = _ORT_DTYPES.get(self.input.type, np.float32)

    def session(self, threads: int):
        """The session running with `threads` intra-op threads (made on first use)."""
        with self._lock:
            if threads not in self._sessions:
                import onnxruntime as ort

                options = ort.SessionOptions()
                options.intra_op_num_threads = threads
                options.inter_op_num_threads = 1
                options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                # Concurrent requests share the cores: threads that spin while idle would steal them.
                options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                # The CPU arena grows to the largest run's peak and never gives it back (two sessions per
                # model): a 20-minute soak grew ~900 MB/h and kept it when idle. Without it the server
                # starts 160 MiB smaller and gives the memory back when the load ends, at a click latency
                # within the noise of the runs here (bench/results/soak.md).
                options.enable_cpu_mem_arena = False
                self._sessions[threads] = ort.InferenceSession(self.source, options, providers=self.providers)
            return self._sessions[threads]

    def run(self, x: torch.Tensor, threads: int):
        array = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=self.input_dtype)
        session = self.session(self.fixed_threads or threads)
        outputs = [torch.from_numpy(o).to(self.device) for o in session.run(None, {self.input.name: array})]
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


def cache_key(network: torch.nn.Module) -> str:
    """Hash of the network's definition and weights: a changed checkpoint gets a new export."""
    digest = hashlib.sha256(f"{torch.__version__} {network!r}".encode())
    for name, tensor in network.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:20]


def build_engine(
    network: torch.nn.Module,
    engine: str,
    example_shape: Sequence[int],
    *,
    device: str = "cpu",
    model: str | None = None,
    threads: int | None = None,
) -> Engine:
    """`network` (weights loaded) as the engine `engine` (resolved for `model`) on `device`.

    `example_shape` is one input (channels first, no batch) used to trace/export. Exports are cached
    (see the module notes) when the cache folder is writable, else built in memory.
    """
    engine = resolve_engine(engine, device, model)
    network = network.eval().to(torch.device(device))
    if engine == EngineName.TORCH:
        return TorchModule(network)
    example = torch.rand(1, *example_shape, device=torch.device(device))
    cached = _cache_path(network, engine)
    if engine == EngineName.ONNXRUNTIME:
        if cached is None:
            buffer = io.BytesIO()
            export_onnx(network.cpu(), example.cpu(), buffer)
            return OnnxModule(buffer.getvalue(), threads=threads, device=device)
        _export_once(cached, lambda tmp: export_onnx(network.cpu(), example.cpu(), tmp))
        return OnnxModule(cached, threads=threads, device=device)
    if cached is None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            return TorchModule(torch.jit.freeze(torch.jit.trace(network, example)), engine=EngineName.TORCHSCRIPT)
    _export_once(cached, lambda tmp: export_torchscript(network, example, tmp))
    return TorchModule(torch.jit.load(str(cached), map_location=torch.device(device)), engine=EngineName.TORCHSCRIPT)


def _cache_path(network: torch.nn.Module, engine: str) -> Path | None:
    folder = current.cache_dir
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    if not os.access(folder, os.W_OK):
        return None
    suffix = ".onnx" if engine == EngineName.ONNXRUNTIME else ".ts"
    return folder / f"{cache_key(network)}{suffix}"


def _export_once(path: Path, export: Callable[[Path], None]) -> None:
    """Write the export to a temp name and rename it, so a reader never sees half a file."""
    if path.is_file():
        path.touch()  # recently used: kept when the cache is pruned
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        export(tmp)
        os.replace(tmp, path)
        logger.info("exported %s", path)
    finally:
        tmp.unlink(missing_ok=True)
    exports = [*path.parent.glob("*.onnx"), *path.parent.glob("*.ts")]
    exports.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    for stale in exports[CACHE_LIMIT:]:
        stale.unlink(missing_ok=True)
