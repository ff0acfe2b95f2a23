"""Inference engines: one network run by eager PyTorch, TorchScript or ONNX Runtime, on CPU or CUDA.

API (stable; the app's tasks, the registry's uploaded models and the benches call it):
- `EngineSettings(default, per_model, threads, cache_dir)`: the engine choices, passed in (never global).
  `choice(model)` is the engine asked for `model`; `app_conf(device)` / `from_conf(conf)` carry them
  through a MONAI Label app's `conf` dict (keys `device`, `engine`, `engine_<model>`, `engine_threads`,
  `engine_cache`), which is how the server hands its `Settings` to the app's tasks.
- `check_engine(name) -> EngineName`, `resolve_engine(name, device, model=None, settings=None) -> EngineName`
  (`auto` → the settings' choice for `model` → the fastest here), `build_engine(network, engine,
  example_shape, *, device, model=None, threads=None, settings=None) -> Engine`.
- `Engine` (a `torch.nn.Module`: `TorchModule`, `OnnxModule`); `forward(x, pacing=None)`.
- `Pacing(checkpoint, share)`: how one request's forwards run, owned by the scheduler: `checkpoint` is
  called before every forward (batch work pauses there while clicks run), `share` (a `ThreadShare`)
  hands each forward its share of the threads. It travels in the request dict under `PACING`; a task's
  `_get_network(device, data)` returns `paced(engine, data)`.

Every engine takes and returns tensors, so MONAI's inferers (simple, sliding window) and MONAI Label's
`BasicInferTask.run_inferer` call it like the eager network. Its `engine` attribute names what really
runs it (the model object's `engine` key).

`auto` picks the fastest measured here (bench/engines.py): ONNX Runtime on CPU (for the app's UNets on
2 cores about 2× eager PyTorch when the machine is quiet, 3–7× when it is busy), eager PyTorch on CUDA.
Exported files are cached in one folder (`EngineSettings.cache_dir`: `AIAA_ENGINE_CACHE`, default
`~/.cache/aiaa/engines`), named by a hash of the network's definition and weights: a new checkpoint
re-exports by itself, and the same weights in another model folder reuse the export.

(A little over 400 lines on purpose: the engines, the exports they are built from and the pacing they run
under are one API that the app, the registry and the scheduler share.)
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .vocabularies import EngineName

logger = logging.getLogger(__name__)

AUTO = EngineName.AUTO
ONNX_OPSET = 17
CACHE_LIMIT = 64  # exported files kept in the cache folder (least recently used removed first)

# torch.onnx.export keeps its state in process-wide globals (opset, "in export", export type) and
# TorchScript compilation shares CPython's parser state, so two models' first requests building their
# engines at once could break each other's export: every export and trace in this process takes turns here.
# Reentrant: `_export_once` holds it across its check, export and rename.
EXPORT_LOCK = threading.RLock()

# MONAI Label `conf` keys (string values) that carry the engine settings into an app's tasks.
CONF_DEVICE, CONF_ENGINE, CONF_THREADS, CONF_CACHE = "device", "engine", "engine_threads", "engine_cache"
PACING = "aiaa_pacing"  # request key: the scheduler's `Pacing` for this request's forwards


def default_cache_dir() -> Path:
    return Path(os.environ.get("AIAA_ENGINE_CACHE", "~/.cache/aiaa/engines")).expanduser()


def cpu_threads() -> int:
    """Cores this process may run on (the container's share, not the host's count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def check_engine(name: str) -> EngineName:
    """A valid engine name (or `auto`), else ValueError naming the choices."""
    name = (name or AUTO).strip().lower()
    if name not in tuple(EngineName):
        raise ValueError(f"unknown engine '{name}'; choose one of: {', '.join(EngineName)}")
    return EngineName(name)


@dataclass(frozen=True)
class EngineSettings:
    """The engine choices (`aiaa serve --engine/--model-engine/--inference-threads`), passed to whoever builds."""

    default: EngineName = AUTO
    per_model: Mapping[str, EngineName] = field(default_factory=dict)
    threads: int = 0  # per inference; 0: the cores present (shared out while several run)
    cache_dir: Path = field(default_factory=default_cache_dir)

    def __post_init__(self) -> None:  # invalid names raise ValueError here, where they are given
        object.__setattr__(self, "default", check_engine(self.default))
        object.__setattr__(self, "per_model", {m: check_engine(e) for m, e in dict(self.per_model).items()})
        object.__setattr__(self, "threads", max(0, int(self.threads)))
        object.__setattr__(self, "cache_dir", Path(self.cache_dir).expanduser())

    def choice(self, model: str | None = None) -> EngineName:
        """The engine asked for `model`: its own entry, else the default (maybe `auto`)."""
        return self.per_model.get(model or "", self.default)

    def inference_threads(self) -> int:
        """Threads one inference may use: the setting, else the cores present."""
        return self.threads or cpu_threads()

    def app_conf(self, device: str) -> dict[str, str]:
        """These settings and the device as MONAI Label `conf` entries (what `from_conf` reads back)."""
        conf = {CONF_DEVICE: str(device), CONF_ENGINE: str(self.default), CONF_THREADS: str(self.threads)}
        conf[CONF_CACHE] = str(self.cache_dir)
        conf.update({f"{CONF_ENGINE}_{model}": str(engine) for model, engine in self.per_model.items()})
        return conf

    @classmethod
    def from_conf(cls, conf: Mapping[str, str] | None, model: str | None = None) -> EngineSettings:
        """The settings a MONAI Label `conf` carries (missing keys: the defaults, as under stock MONAI Label)."""
        conf = conf or {}
        per_model = {model: conf[f"{CONF_ENGINE}_{model}"]} if model and conf.get(f"{CONF_ENGINE}_{model}") else {}
        cache = conf.get(CONF_CACHE)
        return cls(
            conf.get(CONF_ENGINE) or AUTO,
            per_model,
            int(conf.get(CONF_THREADS) or 0),
            *([Path(cache)] if cache else []),
        )


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_engine(
    name: str, device: str = "cpu", model: str | None = None, settings: EngineSettings | None = None
) -> EngineName:
    """The engine that runs `model` on `device`.

    An explicit `name` wins; `auto` defers to the settings' choice for `model` (per model, then default),
    then to the fastest measured here: ONNX Runtime on CPU, eager PyTorch on CUDA.
    """
    name = check_engine(name)
    if name == AUTO and settings is not None:
        name = settings.choice(model)
    if name != AUTO:
        return name
    if str(device).startswith("cuda"):
        return EngineName.TORCH
    return EngineName.ONNXRUNTIME if onnxruntime_available() else EngineName.TORCH


# ---------------------------------------------------------------------------------- threads and pacing


class ThreadShare:
    """Shares `total` threads among the forwards running at once (one object per scheduler, not per process).

    Measured on the 2-core target: a click alone is fastest on both cores (0.18 s against 0.24 s on one),
    but two clicks (or a click and a segmentation patch) on one core each finish together sooner than on
    two threads each, which would only fight over the cores.
    """

    def __init__(self, total: int = 0):
        self.total = total or cpu_threads()
        self.running = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def forward(self) -> Iterator[int]:
        """The threads a forward starting now gets: all of `total` alone, an equal share otherwise."""
        with self._lock:
            self.running += 1
            share = self.running
        try:
            yield max(1, self.total // share)
        finally:
            with self._lock:
                self.running -= 1


def no_pause() -> None:
    """The checkpoint of work that never waits for other work."""


@dataclass(frozen=True)
class Pacing:
    """How one request's forwards run: `checkpoint` before each (lower-priority work may pause there) and
    the `share` of threads each gets (None: the engine's own thread count)."""

    checkpoint: Callable[[], None] = no_pause
    share: ThreadShare | None = None

    def __deepcopy__(self, memo: dict) -> Pacing:
        """The same handle: MONAI Label deep-copies request dicts, and the scheduler behind it is shared."""
        return self


# ------------------------------------------------------------------------------------------- engines


class Engine(torch.nn.Module):
    """A network ready to infer: tensors in, tensors out, no gradients; `engine` says what runs it."""

    engine = EngineName.TORCH

    def __init__(self, threads: int = 0):
        super().__init__()
        self.threads = threads or cpu_threads()  # per forward when no `Pacing` shares them out

    def forward(self, x: torch.Tensor, pacing: Pacing | None = None):
        if pacing is not None:
            pacing.checkpoint()
        if hasattr(x, "as_tensor"):  # MONAI MetaTensor: its metadata is not needed inside the network
            x = x.as_tensor()
        if pacing is None or pacing.share is None:
            return self.run(x, self.threads)
        with pacing.share.forward() as threads:
            return self.run(x, threads)

    def run(self, x: torch.Tensor, threads: int):
        raise NotImplementedError


class PacedEngine(torch.nn.Module):
    """An engine bound to one request's `Pacing`: what the inferer calls for that request."""

    def __init__(self, inner: Engine, pacing: Pacing):
        super().__init__()
        self.inner, self.pacing = inner, pacing

    @property
    def engine(self) -> str:
        return self.inner.engine

    def forward(self, x: torch.Tensor):
        return self.inner(x, self.pacing)


def paced(network: torch.nn.Module, data: Mapping | None) -> torch.nn.Module:
    """`network` bound to the request's `Pacing` (`data[PACING]`), or as it is without one."""
    pacing = (data or {}).get(PACING)
    if pacing is None or not isinstance(network, Engine):
        return network
    return PacedEngine(network, pacing)


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
    tensor, several as a tuple. With `threads` every run uses that many; otherwise a run gets its share
    of `total_threads` (its `Pacing`'s `ThreadShare`), from one session per thread count (made when first
    needed; ONNX Runtime sessions are thread-safe, so concurrent runs may share one).
    """

    engine = EngineName.ONNXRUNTIME

    def __init__(
        self, model: str | os.PathLike | bytes, threads: int | None = None, device: str = "cpu", total_threads: int = 0
    ):
        super().__init__(total_threads)
        import onnxruntime as ort

        self.source = model if isinstance(model, bytes) else str(model)
        self.fixed_threads = threads
        self.providers = ["CPUExecutionProvider"]
        if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            self.providers.insert(0, "CUDAExecutionProvider")
        self.device = torch.device(device)
        self._sessions: dict[int, object] = {}
        self._lock = threading.Lock()
        first = self.session(threads or self.threads)  # fails here, at load, on a bad file
        if not threads:
            self.session(max(1, self.threads // 2))  # two at once, the common share, ready too
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
    with EXPORT_LOCK, warnings.catch_warnings(), torch.no_grad():
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
    with EXPORT_LOCK, warnings.catch_warnings(), torch.no_grad():
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
    settings: EngineSettings | None = None,
) -> Engine:
    """`network` (weights loaded) as the engine `engine` (resolved for `model` by `settings`) on `device`.

    `example_shape` is one input (channels first, no batch) used to trace/export. Exports are cached in
    `settings.cache_dir` (see the module notes) when it is writable, else built in memory. `threads`
    fixes an ONNX Runtime engine's threads per run; by default it uses `settings.inference_threads()`.
    """
    settings = settings if settings is not None else EngineSettings()
    engine = resolve_engine(engine, device, model, settings)
    network = network.eval().to(torch.device(device))
    if engine == EngineName.TORCH:
        return TorchModule(network)
    example = torch.rand(1, *example_shape, device=torch.device(device))
    cached = _cache_path(settings.cache_dir, network, engine)
    if engine == EngineName.ONNXRUNTIME:
        onnx = dict(threads=threads, device=device, total_threads=settings.inference_threads())
        if cached is None:
            buffer = io.BytesIO()
            export_onnx(network.cpu(), example.cpu(), buffer)
            return OnnxModule(buffer.getvalue(), **onnx)
        _export_once(cached, lambda tmp: export_onnx(network.cpu(), example.cpu(), tmp))
        return OnnxModule(cached, **onnx)
    if cached is None:
        with EXPORT_LOCK, warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            return TorchModule(torch.jit.freeze(torch.jit.trace(network, example)), engine=EngineName.TORCHSCRIPT)
    _export_once(cached, lambda tmp: export_torchscript(network, example, tmp))
    return TorchModule(torch.jit.load(str(cached), map_location=torch.device(device)), engine=EngineName.TORCHSCRIPT)


def _cache_path(folder: Path, network: torch.nn.Module, engine: str) -> Path | None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    if not os.access(folder, os.W_OK):
        return None
    suffix = ".onnx" if engine == EngineName.ONNXRUNTIME else ".ts"
    return folder / f"{cache_key(network)}{suffix}"


def _export_once(path: Path, export: Callable[[Path], None]) -> None:
    """Write the export to a temp name and rename it, so a reader never sees half a file (another process
    may share the cache folder); in this process one export at a time, so the same weights export once."""
    with EXPORT_LOCK:
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
