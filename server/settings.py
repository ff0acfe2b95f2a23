"""Every server setting in one object, filled from the CLI (or a test) and handed to `create_app`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .app_loader import default_app_dir
from .archives import ArchiveLimits
from .auth import AdminCredentials


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 5000
    model_repo: Path = field(default_factory=lambda: Path("model_repo"))
    app_dir: Path = field(default_factory=default_app_dir)  # apps/spleen of the checkout or the wheel
    app_models: str = "all"  # which of the app's models to serve (comma separated names)
    log_dir: Path = field(default_factory=lambda: Path("logs"))
    threads: int = 8  # waitress worker threads
    connection_limit: int = 500  # open connections served at once; more wait in the listen backlog
    channel_timeout_s: float = 60.0  # a connection that sends or receives nothing this long is closed
    allowed_hosts: tuple[str, ...] = ()  # Host header names served; () = loopback names on a loopback bind, else any
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to read replies (CORS); () = none
    max_upload_bytes: int = 2 * 1024**3
    max_image_voxels: int = 1024**3 // 2
    device: str = "cpu"
    url_prefix: str = ""  # e.g. "/aiaa": also serve every route under this path prefix
    session_dir: Path = field(default_factory=lambda: Path("sessions"))
    datastore_dir: Path = field(default_factory=lambda: Path("datastore"))  # images + labels (server/monailabel_api)
    session_expiry_s: float = 3600.0  # when the client asks for none (expiry=0 or absent)
    session_max_expiry_s: float = 24 * 3600.0
    session_max_bytes: int = 8 * 1024**3  # decoded images held by all sessions together
    session_reap_interval_s: float = 10.0
    engine: str = "auto"  # auto, torch, torchscript or onnxruntime (aiaa_core/engines.py)
    model_engines: dict[str, str] = field(default_factory=dict)  # per model name, overriding `engine`
    inference_threads: int = 0  # threads one inference may use; 0: the cores (shared out, aiaa_core/engines.py)
    interactive_workers: int = 2  # clicks/extreme points inferred at once (server/scheduler.py)
    interactive_queue: int = 16  # more may wait; beyond that 503 + Retry-After
    batch_workers: int = 1  # full-volume segmentations at once
    batch_queue: int = 4
    # Memory all running requests may allocate together (decoded uploads, pipeline grids, masks), on top of
    # the sessions' images (session_max_bytes) and the models: 12 + 8 GiB fit a 24 GB box. Each running
    # request gets half of it for its lane, split among that lane's workers; more is a 413 (server/budget.py).
    # Default from AIAA_MEMORY_BUDGET_MB when set.
    memory_budget_bytes: int = field(
        default_factory=lambda: int(float(os.environ.get("AIAA_MEMORY_BUDGET_MB", 12 * 1024)) * 2**20)
    )
    warm_up: bool = True  # build every engine and infer once before serving
    # Cluster mode (issue 15, server/session_stores, server/backends): sessions in Redis, inference on Ray Serve.
    redis_url: str = field(default_factory=lambda: os.environ.get("AIAA_REDIS_URL", ""))  # "": in memory
    ray_address: str = field(default_factory=lambda: os.environ.get("AIAA_RAY_ADDRESS", ""))  # "": in-process
    ray_min_replicas: int = 1  # per served model (Ray Serve autoscaling bounds)
    ray_max_replicas: int = 2
    ray_replicas_per_node: int = 0  # at most this many replicas of one model per node; 0: no limit
    ray_replica_cpus: float = 1.0  # Ray CPUs each replica reserves
    # Replicas sharing one model repository re-read it every N s (server/model_sync.py), besides Redis pub/sub.
    model_poll_s: float | None = None  # None: every 5 s with redis_url, never without; 0: never
    admin_credentials: AdminCredentials = field(default_factory=AdminCredentials)  # see server/auth.py
    archive_limits: ArchiveLimits = field(default_factory=ArchiveLimits)  # model uploads, see server/archives.py

    def __post_init__(self) -> None:
        self.model_repo = Path(self.model_repo)
        self.app_dir = Path(self.app_dir)
        self.log_dir = Path(self.log_dir)
        self.session_dir = Path(self.session_dir)
        self.allowed_hosts = tuple(self.allowed_hosts)
        self.cors_origins = tuple(self.cors_origins)
