"""Where a model's inference runs: in this process (the default) or on a Ray Serve cluster (`--ray ADDRESS`).

Both take what the inference blueprint has checked (the served model, the image, the task's inputs, the
session) and give back the mask on the image's grid and the result params, so the reply is built the
same way whatever ran the model. The Ray Serve backend lives in `server.backends.ray_serve` (the
`cluster` extra); it is imported only when the settings ask for it.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

import numpy as np
import SimpleITK as sitk
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from ..inference import run_model
from ..served_model import ServedModel
from ..sessions import Session

if TYPE_CHECKING:
    from aiaa_core.engines import Pacing

    from ..settings import Settings


class BackendKind(StrEnum):
    IN_PROCESS = "in-process"
    RAY_SERVE = "ray-serve"


class InferenceBackend(Protocol):
    kind: str

    def run(
        self,
        model: ServedModel,
        image: sitk.Image,
        inputs: dict,
        *,
        device: str = "cpu",
        session: Session | None = None,
        pacing: Pacing | None = None,
    ) -> tuple[np.ndarray, dict]: ...

    def start(self) -> None: ...
    def describe(self) -> dict: ...
    def close(self) -> None: ...


class InProcessBackend:
    """Today's path: the task runs in this process, on the scheduler's worker thread."""

    kind = BackendKind.IN_PROCESS

    def run(
        self,
        model: ServedModel,
        image: sitk.Image,
        inputs: dict,
        *,
        device: str = "cpu",
        session: Session | None = None,
        pacing: Pacing | None = None,
    ) -> tuple[np.ndarray, dict]:
        return run_model(model, image, inputs, device=device, session=session, pacing=pacing)

    def start(self) -> None:
        """Nothing to start."""

    def describe(self) -> dict:
        return {"kind": str(self.kind)}

    def close(self) -> None:
        """Nothing to stop."""


class BackendCollector(Collector):
    """Prometheus metrics per inference replica (the Ray Serve backend's; nothing for the in-process one)."""

    def __init__(self, backend: InferenceBackend):
        self.backend = backend

    def collect(self) -> Iterator[Metric]:
        served = getattr(self.backend, "served", lambda: [])()
        requests = CounterMetricFamily(
            "aiaa_backend_requests", "Inferences answered by each replica.", labels=["model", "replica", "node"]
        )
        seconds = CounterMetricFamily(
            "aiaa_backend_seconds",
            "Time spent in calls to each replica (round trip).",
            labels=["model", "replica", "node"],
        )
        for entry in served:
            labels = [entry["model"], entry["replica"], entry["node"][:12]]
            requests.add_metric(labels, entry["requests"])
            seconds.add_metric(labels, entry["seconds"])
        yield requests
        yield seconds


def open_backend(settings: Settings) -> InferenceBackend:
    """Ray Serve when the settings name a cluster address, else in-process. Nothing connects here: `start`."""
    if settings.ray_address:
        from .ray_serve import RayServeBackend  # the `cluster` extra

        return RayServeBackend(settings)
    return InProcessBackend()
