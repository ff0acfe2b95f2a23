"""The fast path for uploaded models: the same engine choice as the app's models, made safe for uploads by a
tolerance check, and the same per-session cache of point-independent pre-processing.

Engine: what the server's choice resolves to for the model (`engines.resolve_engine`: ONNX Runtime on the
CPU under `auto`), built by `engines.build_engine` (cached exports, like the app's), is used only when its
output matches the uploaded network's own (eager) output within `ATOL + RTOL·max|eager|` on a seeded input
of the network's window size. A mismatch (or an export that fails) falls back to TorchScript, then to the
upload as it came. The check is bounded: one input of at most `MAX_CHECK_VOXELS` voxels (larger windows
keep the upload's engine), one forward per engine, no gradients, and nothing is exported when the
upload's own forward took over `MAX_CHECK_S`; the export traces the network, which runs tensor math only
(allow-listed MONAI networks, or TorchScript checked before it loaded).

Pre-processing: the leading pre-transforms that read the image alone (`POINT_FREE`, keyed on the input
only) are the point-independent part, run once per session image like the app's `prepare`.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence

import torch
from monai.inferers import Inferer, SlidingWindowInferer
from monai.transforms import (
    CastToTyped,
    EnsureChannelFirstd,
    EnsureTyped,
    NormalizeIntensityd,
    Orientationd,
    ScaleIntensityd,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
    Spacingd,
    ThresholdIntensityd,
    ToTensord,
)

from aiaa_core.engines import Engine, EngineSettings, TorchModule, build_engine, resolve_engine
from aiaa_core.vocabularies import EngineName

from .adapters import LoadServerImaged

__all__ = ["MAX_CHECK_VOXELS", "check_shape", "choose_engine", "point_free_prefix"]

logger = logging.getLogger(__name__)

ATOL, RTOL = 1e-3, 1e-3  # on the network's raw output (logits): far below what changes an argmax
MAX_CHECK_VOXELS = 128**3  # the check's input, channels included: bounds its time and memory
MAX_CHECK_S = 60.0  # an upload whose own forward on that input takes longer is not exported (a huge network)
DEFAULT_CHECK_SIZE = 64  # per spatial axis, for a network run on the whole image (no window)
SEED = 0

# Transforms that read the image alone: a prefix of these is computed once per session image.
POINT_FREE = (
    LoadServerImaged,
    EnsureChannelFirstd,
    Orientationd,
    Spacingd,
    ScaleIntensityRanged,
    ScaleIntensityRangePercentilesd,
    ScaleIntensityd,
    NormalizeIntensityd,
    ThresholdIntensityd,
    EnsureTyped,
    CastToTyped,
    ToTensord,
)


def point_free_prefix(transforms: Sequence[Callable], input_key: str) -> list[Callable]:
    """The leading transforms that depend on the image only (classes of `POINT_FREE` keyed on `input_key`)."""
    prefix = []
    for transform in transforms:
        keys = tuple(getattr(transform, "keys", ()))
        if type(transform) not in POINT_FREE or keys != (input_key,):
            break
        prefix.append(transform)
    return prefix


def check_shape(network: torch.nn.Module, inferer: Inferer) -> tuple[int, ...] | None:
    """One network input (channels first, no batch) for the check, or None when it cannot be bounded.

    The channels are the first convolution's; the spatial size is the sliding window's, else
    `DEFAULT_CHECK_SIZE` per axis (the exports' spatial axes are dynamic)."""
    first = next((p for p in network.parameters() if p.ndim in (4, 5)), None)
    if first is None:
        return None
    dims, channels = first.ndim - 2, int(first.shape[1])
    roi = getattr(inferer, "roi_size", None) if isinstance(inferer, SlidingWindowInferer) else None
    if roi is None:
        spatial = (DEFAULT_CHECK_SIZE,) * dims
    else:
        spatial = tuple(int(n) for n in (roi if isinstance(roi, Sequence) else [roi] * dims))
        if len(spatial) != dims or min(spatial) < 1:
            return None
    if channels * math.prod(spatial) > MAX_CHECK_VOXELS:
        return None
    return (channels, *spatial)


def choose_engine(
    uploaded: Engine, shape: tuple[int, ...] | None, settings: EngineSettings, device: str, model: str | None
) -> tuple[Engine, str]:
    """The engine to serve with and why: the settings' choice for `model` when it passes the check, else
    TorchScript when it does, else `uploaded` (the network as uploaded)."""
    wanted = resolve_engine(settings.choice(model), device, model, settings)
    fallbacks = {EngineName.ONNXRUNTIME: [EngineName.ONNXRUNTIME, EngineName.TORCHSCRIPT]}
    candidates = [] if wanted == EngineName.TORCH else fallbacks.get(wanted, [wanted])
    candidates = [e for e in candidates if e != uploaded.engine]
    if not candidates or uploaded.engine == EngineName.ONNXRUNTIME or not isinstance(uploaded, TorchModule):
        return uploaded, f"{uploaded.engine} (as uploaded)"
    if shape is None:
        return uploaded, f"{uploaded.engine} (no bounded input to check another engine with)"
    x = torch.rand(1, *shape, generator=torch.Generator().manual_seed(SEED)).to(device)
    started = time.perf_counter()
    try:
        reference = forward(uploaded, x)
    except Exception as error:  # noqa: BLE001 - the smoke test that follows judges the upload itself
        return (
            uploaded,
            f"{uploaded.engine} (no check: the upload fails on a {tuple(x.shape)} input, {type(error).__name__})",
        )
    if time.perf_counter() - started > MAX_CHECK_S:
        return uploaded, f"{uploaded.engine} (one forward took over {MAX_CHECK_S:g} s: not exported)"
    if not isinstance(reference, torch.Tensor):
        return uploaded, f"{uploaded.engine} (its output is not one tensor)"
    for engine in candidates:
        started = time.perf_counter()
        try:
            built = build_engine(uploaded.module, engine, shape, device=device, model=model, settings=settings)
            output = forward(built, x)
        except Exception as error:  # noqa: BLE001 - an export a network does not support: try the next
            logger.info("'%s': %s not used (%s: %s)", model, engine, type(error).__name__, str(error)[:200])
            continue
        error = max_error(output, reference)
        allowed = ATOL + RTOL * float(reference.abs().max())
        seconds = time.perf_counter() - started
        if error is not None and error <= allowed:
            logger.info("'%s': %s matches the upload (max error %.2g, %.1f s)", model, engine, error, seconds)
            return built, f"{engine} (max error {error:.2g} ≤ {allowed:.2g})"
        logger.warning(
            "'%s': %s differs from the upload (max error %s > %.2g): not used",
            model,
            engine,
            error,
            allowed,
        )
    return uploaded, f"{uploaded.engine} (no faster engine matched it)"


def forward(engine: Engine, x: torch.Tensor):
    with torch.no_grad():
        return engine(x)


def max_error(output, reference: torch.Tensor) -> float | None:
    if not isinstance(output, torch.Tensor) or output.shape != reference.shape:
        return None
    return float((output.float() - reference.float()).abs().max())
