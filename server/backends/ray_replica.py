"""The Ray Serve deployment that runs one served model: one class, one deployment per model, N replicas.

Each replica loads the model's version folder from the shared model repository (the folder the API
replica names in each request: a replaced model's new folder is loaded on its first request, never a
half-installed one: folders appear complete, by rename) and keeps the sessions it served prepared,
keyed by session id with `@serve.multiplexed`, so Serve routes a session's clicks to the replica that
already holds its volume and the task's prepared data. On a miss (a new session, or this replica is a
replacement for one that died) the volume is read from the Redis session store.

The reply carries the mask cropped to its foreground's bounding box (bits when it is binary), not the
whole grid: a click's mask is a small object in a large volume.
"""

from __future__ import annotations

import asyncio
import logging
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import ray
from ray import serve

from aiaa_core.engines import EngineSettings

from ..errors import ApiError, BadRequest
from ..inference import run_model, warm_up
from ..model_formats import LoadContext, handler
from ..model_store import MARKER, ModelStore
from ..served_model import ServedModel
from ..session_stores.redis_store import RedisSessionStore
from ..sessions import Session

logger = logging.getLogger(__name__)


def bind_to_the_node_address() -> None:
    """Ray Serve 2.60 starts each replica's inter-deployment gRPC server on every interface ("[::]:0"; it is
    used only with RAY_SERVE_USE_GRPC_BY_DEFAULT=1, off here: handles call replicas as Ray actors). Bind it to
    the node's own address instead (127.0.0.1 on a loopback cluster), like every other Ray port. This module is
    imported by the replica process before Serve starts that server; tests/test_cluster_ray.py checks `ss`."""
    from ray.serve._private import replica as serve_replica

    add_port = serve_replica.add_port_to_grpc_server
    if getattr(add_port, "aiaa_node_address", False):
        return

    def add_port_on_the_node_address(server, address: str):
        if address.startswith("[::]:"):
            address = f"{ray.util.get_node_ip_address()}:{address.rsplit(':', 1)[1]}"
        return add_port(server, address)

    add_port_on_the_node_address.aiaa_node_address = True
    serve_replica.add_port_to_grpc_server = add_port_on_the_node_address


bind_to_the_node_address()

SESSIONS_PER_REPLICA = 16  # sessions a replica keeps prepared; the least recently used is dropped first
DAY_S = 24 * 3600.0


def pack_mask(mask: np.ndarray, bbox: list) -> dict:
    """The mask as its foreground's bounding box (inclusive [low, high] as `describe_mask` gives it)."""
    shape = [int(n) for n in mask.shape]
    if not bbox:
        return {"shape": shape, "dtype": mask.dtype.str, "offset": [0] * mask.ndim, "crop": [0] * mask.ndim,
                "bits": True, "data": b""}
    low, high = np.asarray(bbox[0], dtype=int), np.asarray(bbox[1], dtype=int)
    crop = np.ascontiguousarray(mask[tuple(slice(a, b + 1) for a, b in zip(low, high, strict=True))])
    bits = crop.dtype.kind in "biu" and int(crop.max()) <= 1
    data = np.packbits(crop.astype(bool, copy=False).ravel()).tobytes() if bits else crop.tobytes()
    return {"shape": shape, "dtype": mask.dtype.str, "offset": low.tolist(), "crop": list(crop.shape),
            "bits": bits, "data": data}


def unpack_mask(packed: dict) -> np.ndarray:
    """The whole mask again ([i, j, k], Fortran order like the tasks' own masks)."""
    dtype = np.dtype(packed["dtype"])
    mask = np.zeros(packed["shape"], dtype, order="F")
    crop_shape = tuple(packed["crop"])
    count = int(np.prod(crop_shape))
    if count == 0:
        return mask
    if packed["bits"]:
        crop = np.unpackbits(np.frombuffer(packed["data"], np.uint8), count=count).reshape(crop_shape)
    else:
        crop = np.frombuffer(packed["data"], dtype).reshape(crop_shape)
    mask[tuple(slice(o, o + n) for o, n in zip(packed["offset"], crop_shape, strict=True))] = crop
    return mask


def load_version(folder: Path, name: str, app_dir: Path, device: str, engines: EngineSettings) -> ServedModel:
    """One installed version of a model, read-only (as the registry loads it; nothing in the store changes)."""
    if not (folder / MARKER).is_file():
        raise BadRequest(f"Model '{name}' has no complete version at {folder.name}.")
    marker = ModelStore(folder.parent).marker(folder)
    context = LoadContext(device=device, app_dir=app_dir, engines=engines, marker=marker)
    model = handler(marker["format"]).build(folder, name, context)
    model.folder = folder
    return model


class ModelReplica:
    """One replica of one served model (the deployment's class; `config` comes from the API's settings)."""

    def __init__(self, config: dict):
        logging.basicConfig(level=logging.INFO)
        self.config = config
        self.engines = EngineSettings(config["engine"], config["model_engines"], config["threads"])
        self.device = config["device"]
        self.versions: dict[str, ServedModel] = {}  # version folder → model (the newest only)
        self._load_lock = threading.Lock()
        self.store = None
        if config["redis_url"]:
            scratch = Path(tempfile.mkdtemp(prefix="aiaa-replica-"))
            self.store = RedisSessionStore(config["redis_url"], scratch, DAY_S, DAY_S, config["session_bytes"])
            self.store.start_reaper(30.0)
        context = serve.get_replica_context()
        self.replica = context.replica_id.unique_id
        self.node = ray.get_runtime_context().get_node_id()
        if config.get("folder"):  # loaded and warmed up before any traffic reaches this replica
            warm_up([self.model(config["folder"], config["model"])], self.device)

    def model(self, folder: str, name: str) -> ServedModel:
        with self._load_lock:
            if folder not in self.versions:
                model = load_version(Path(folder), name, Path(self.config["app_dir"]), self.device, self.engines)
                self.versions = {folder: model}  # an older version is dropped: the API names the newest
                logger.info("replica %s: '%s' loaded from %s", self.replica, name, Path(folder).name)
            return self.versions[folder]

    @serve.multiplexed(max_num_models_per_replica=SESSIONS_PER_REPLICA)
    async def session(self, session_id: str) -> Session:
        """A session's volume, from the store (a miss: this replica had not served it, or dropped it)."""
        if self.store is None:
            raise BadRequest("This Ray Serve deployment has no session store (start the API with --redis).")
        return await asyncio.to_thread(self.store.get, session_id, touch=False)

    async def infer(self, request: dict) -> dict:
        """Run the task; the mask comes back packed, with where and how long it ran. An `ApiError` (a session
        gone from the store → 440) comes back as {"error": ...}: the API raises it again."""
        try:
            return await self._infer(request)
        except ApiError as error:
            return {"error": {"status": error.status, "type": error.type, "message": error.message}}

    async def _infer(self, request: dict) -> dict:
        started = time.perf_counter()
        model = await asyncio.to_thread(self.model, request["folder"], request["model"])
        if request.get("session_id"):
            session = await self.session(serve.get_multiplexed_model_id())
            image = session.image
        else:
            session, image = None, request["image"]
        loaded = time.perf_counter()
        mask, result = await asyncio.to_thread(
            run_model, model, image, request["inputs"], device=self.device, session=session
        )
        result["latencies"]["load"] = round(loaded - started, 4)
        return {
            "mask": pack_mask(mask, result.get("bbox") or []),
            "result": result,
            "replica": self.replica,
            "node": self.node,
            "pid": os.getpid(),
            "seconds": time.perf_counter() - started,
        }
