"""Inference on a Ray Serve cluster, called through deployment handles (never Ray's HTTP front end).

One Serve application per served model (`aiaa-<model>`, one `ModelReplica` deployment), with the replica
bounds from the settings; the first API replica that needs a model deploys it, the others find it
running. A session's requests carry its id as the multiplexed model id, so Serve sends its clicks to the
replica that holds its prepared volume; a request with an uploaded image sends the image itself.

A replica that dies is retried on another (Serve replaces the dead one); a request that finds none after
`RETRIES` attempts is a 503. Errors the replica answers (a session gone from Redis → 440) come back as
the same `ApiError`. Clicks and segmentations run on different deployments (one per model), so a long
segmentation never occupies the replica a click waits for; the API's lanes still bound what is in flight.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import numpy as np
import SimpleITK as sitk

from ..errors import ApiError, ServiceUnavailable
from ..inference import run_model
from ..served_model import ServedModel
from ..sessions import Session
from . import BackendKind
from .ray_replica import ModelReplica, unpack_mask

if TYPE_CHECKING:
    from aiaa_core.engines import Pacing

    from ..settings import Settings

logger = logging.getLogger(__name__)

NAMESPACE = "aiaa"
APP_PREFIX = "aiaa-"
RETRIES = 4
RETRY_PAUSE_S = 1.0
REQUEST_TIMEOUT_S = 600.0
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def app_name(model_name: str) -> str:
    return APP_PREFIX + model_name


def replica_config(settings: Settings, model: ServedModel) -> dict:
    """What a replica needs to load the model and reach the sessions (plain values: it is pickled)."""
    return {
        "model": model.name,
        "folder": str(model.folder.resolve()) if model.folder is not None else "",
        "app_dir": str(settings.app_dir.resolve()),
        "device": settings.device,
        "engine": str(settings.engine),
        "model_engines": {k: str(v) for k, v in settings.model_engines.items()},
        "threads": settings.inference_threads,
        "redis_url": settings.redis_url,
        "session_bytes": settings.session_max_bytes,
    }


class RayServeBackend:
    kind = BackendKind.RAY_SERVE

    def __init__(self, settings: Settings):
        self.settings = settings
        self._lock = threading.Lock()
        self._connected = False
        self._handles: dict[str, object] = {}
        self._served: dict[tuple[str, str, str], list[float]] = {}  # (model, replica, node) → [count, seconds]

    # ---------------------------------------------------------------------------------------- connecting

    def start(self) -> None:
        """Join the cluster as a driver and start Serve without its HTTP proxy (idempotent)."""
        with self._lock:
            if self._connected:
                return
            host = urlsplit(f"//{self.settings.ray_address}").hostname or ""
            options = {}
            if host in LOOPBACK:  # a cluster on this machine's loopback: else Ray swaps 127.0.0.1 for the
                os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # host's address (read at import)
                options["_node_ip_address"] = "127.0.0.1"
            import ray
            from ray import serve

            ray.init(
                address=self.settings.ray_address,
                namespace=NAMESPACE,
                log_to_driver=False,
                configure_logging=False,
                **options,
            )
            serve.start(proxy_location="Disabled")
            self._connected = True
            logger.info("inference on the Ray cluster at %s (Ray Serve, handles)", self.settings.ray_address)

    def handle(self, model: ServedModel):
        """The model's deployment handle; deployed here when no API replica has deployed it yet."""
        from ray import serve

        self.start()
        name = app_name(model.name)
        with self._lock:
            if name in self._handles:
                return self._handles[name]
            status = serve.status().applications.get(name)
            state = str(getattr(status.status, "value", status.status)) if status is not None else ""
            # Absent, failed or being deleted: (re)deploy. Running or being deployed by another API replica: use it.
            if state not in ("RUNNING", "DEPLOYING", "UNHEALTHY"):
                serve.run(self.application(model), name=name, route_prefix=None)
                logger.info("deployed '%s' on Ray Serve", model.name)
            handle = serve.get_app_handle(name)
            self._handles[name] = handle
            return handle

    def application(self, model: ServedModel):
        from ray import serve

        s = self.settings
        options: dict = {
            "name": model.name,
            "autoscaling_config": {
                "min_replicas": s.ray_min_replicas,
                "max_replicas": max(s.ray_min_replicas, s.ray_max_replicas),
                "target_ongoing_requests": 2,
            },
            "max_ongoing_requests": 8,
            "ray_actor_options": {"num_cpus": s.ray_replica_cpus, "num_gpus": 1 if s.device.startswith("cuda") else 0},
            "health_check_period_s": 2.0,
            "graceful_shutdown_timeout_s": 5.0,
        }
        if s.ray_replicas_per_node > 0:
            options["max_replicas_per_node"] = s.ray_replicas_per_node
        return serve.deployment(ModelReplica).options(**options).bind(replica_config(s, model))

    # ------------------------------------------------------------------------------------------ running

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
        """Infer on the model's deployment; a model outside the repository (a test's own) runs here."""
        if model.folder is None:
            return run_model(model, image, inputs, device=device, session=session, pacing=pacing)
        handle = self.handle(model)
        request = {"model": model.name, "folder": str(model.folder.resolve()), "inputs": inputs}
        if session is not None:
            handle = handle.options(multiplexed_model_id=session.id)
            request["session_id"] = session.id
        else:
            request["image"] = image
        started = time.perf_counter()
        reply = self.call(handle, request)
        elapsed = time.perf_counter() - started
        if "error" in reply:
            error = reply["error"]
            raise ApiError(error["message"], status=error["status"], type=error["type"])
        result = reply["result"]
        result["latencies"]["remote"] = round(elapsed - reply["seconds"], 4)  # what the cluster added
        self.record(model.name, reply, elapsed)
        return unpack_mask(reply["mask"]), result

    def call(self, handle, request: dict) -> dict:
        """The replica's reply; a replica that died is retried (another one, or its replacement)."""
        from ray.exceptions import ActorUnavailableError, RayActorError

        for attempt in range(1, RETRIES + 1):
            try:
                return handle.infer.remote(request).result(timeout_s=REQUEST_TIMEOUT_S)
            except (RayActorError, ActorUnavailableError) as error:
                logger.warning("Ray Serve replica lost (%s); attempt %d of %d", type(error).__name__, attempt, RETRIES)
                if attempt == RETRIES:
                    raise ServiceUnavailable("No inference replica is available; try again shortly.") from None
                time.sleep(RETRY_PAUSE_S * attempt)
        raise AssertionError("unreachable")

    def record(self, model: str, reply: dict, elapsed: float) -> None:
        with self._lock:
            entry = self._served.setdefault((model, reply["replica"], reply["node"]), [0, 0.0])
            entry[0] += 1
            entry[1] += elapsed

    def served(self) -> list[dict]:
        """The replicas that answered this API replica: model, replica id, node id, requests, seconds."""
        with self._lock:
            return [
                {"model": m, "replica": r, "node": n, "requests": int(c), "seconds": round(s, 3)}
                for (m, r, n), (c, s) in sorted(self._served.items())
            ]

    # ---------------------------------------------------------------------------------------- reporting

    def describe(self) -> dict:
        """The backend for /ready and the dashboard: the cluster, each model's replicas, who served."""
        state = {"kind": str(self.kind), "address": self.settings.ray_address, "connected": self._connected}
        if self._connected:
            from ray import serve

            try:
                applications = serve.status().applications
            except Exception as error:  # the cluster is unreachable: say so, /ready still answers
                state["error"] = type(error).__name__
            else:
                state["deployments"] = {
                    name[len(APP_PREFIX) :]: {
                        "status": str(app.status),
                        "replicas": {
                            str(k): v for d in app.deployments.values() for k, v in d.replica_states.items()
                        },
                    }
                    for name, app in applications.items()
                    if name.startswith(APP_PREFIX)
                }
        state["served_by"] = self.served()
        return state

    def close(self) -> None:
        """Leave the cluster (the deployments stay: other API replicas use them)."""
        with self._lock:
            if self._connected:
                import ray

                ray.shutdown()
                self._connected = False
