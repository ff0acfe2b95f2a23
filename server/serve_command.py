"""`aiaa serve`: its flags, the Settings they make, and the waitress server that runs the app.

Flags come in groups (where to serve, connections, sessions, cluster, inference) so that `--help` and
this file read in the same order as `server/settings.py`.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import resource
from pathlib import Path

from aiaa_core.vocabularies import EngineName

from .archives import ArchiveLimits
from .settings import Settings

logger = logging.getLogger("aiaa")


def return_large_buffers_to_the_os(threshold: int = 1 << 20) -> bool:
    """Serve buffers of `threshold` bytes or more from their own mappings (glibc's `M_MMAP_THRESHOLD`).

    glibc otherwise raises the threshold as big buffers are freed, so the volumes, crops and masks of
    past requests stay in the heap: with two 512×512×100 sessions the server held about 1.4 GB instead
    of 1.0 GB. False where the C library is not glibc (nothing changed).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, threshold))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


UPLOAD_HEADROOM_BYTES = 1 << 20  # waitress buffers this much past the limit, so the app's JSON 413 answers
HEADER_LIMIT_BYTES = 64 * 1024  # request line and headers; the AIAA clients send a few hundred bytes
LISTEN_BACKLOG = 1024


def raise_open_file_limit() -> int:
    """Raise the soft limit on open files to the hard one, so the connection limit is reachable; return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def waitress_options(settings: Settings) -> dict:
    """How waitress holds connections, so that slow or idle clients cannot starve the others.

    Waitress reads a whole request before a worker thread sees it and buffers replies, so a slow client
    holds a socket, never a thread. Idle sockets are closed after `channel_timeout_s` (checked every
    few seconds); up to `connection_limit` are served at once (waitress' default of 100 let 110 idle
    connections time out /health), within the open-file limit; `poll()` rather than `select()`, which
    fails past 1024 descriptors. The body limit is the app's (plus headroom, so the app answers a
    slightly larger upload with its JSON 413): waitress' own default (1 GB) silently undercut it.
    """
    files = raise_open_file_limit()
    return {
        "threads": settings.threads,
        "connection_limit": max(1, min(settings.connection_limit, files - 64)),
        "channel_timeout": settings.channel_timeout_s,
        "cleanup_interval": max(1, min(10, round(settings.channel_timeout_s / 2))),
        "backlog": LISTEN_BACKLOG,
        "asyncore_use_poll": True,
        "max_request_header_size": HEADER_LIMIT_BYTES,
        "max_request_body_size": settings.max_upload_bytes + UPLOAD_HEADROOM_BYTES,
        "expose_tracebacks": False,
        "ident": "aiaa",
    }


def serve(args: argparse.Namespace) -> None:
    """Start the production WSGI server (waitress) with the app's default models."""
    import torch
    import waitress

    from .app import create_app, engine_settings, start_background
    from .logs import configure_logging

    settings = settings_from_args(args)
    log_file = configure_logging(settings.log_dir)
    # Process-wide settings, set once where the process starts: the C library's, PyTorch's threads.
    return_large_buffers_to_the_os()
    torch.set_num_threads(engine_settings(settings).inference_threads())
    app = create_app(settings)
    start_background(app)  # the session reaper
    logger.info(
        "AIAA server on http://%s:%d (model repo %s, log %s)",
        settings.host,
        settings.port,
        settings.model_repo.resolve(),
        log_file.resolve(),
    )
    waitress.serve(app, host=settings.host, port=settings.port, **waitress_options(settings))


def settings_from_args(args: argparse.Namespace) -> Settings:
    """`aiaa serve`'s flags (and the admin credentials from the environment or --admin-config) as Settings."""
    from .auth import load_credentials

    return Settings(
        host=args.host,
        port=args.port,
        model_repo=args.model_repo,
        app_dir=args.app_dir,
        app_models=args.models,
        log_dir=args.log_dir,
        threads=args.threads,
        connection_limit=args.connection_limit,
        channel_timeout_s=args.channel_timeout,
        allowed_hosts=split_list(args.allowed_hosts),
        cors_origins=split_list(args.cors_origins),
        session_dir=args.session_dir,
        datastore_dir=args.datastore,
        redis_url=args.redis,
        ray_address=args.ray,
        ray_min_replicas=args.ray_min_replicas,
        ray_max_replicas=args.ray_max_replicas,
        ray_replicas_per_node=args.ray_replicas_per_node,
        ray_replica_cpus=args.ray_replica_cpus,
        model_poll_s=args.model_poll_s,
        session_expiry_s=args.session_expiry,
        session_max_expiry_s=args.session_max_expiry,
        session_max_bytes=int(args.session_max_mb * 2**20),
        memory_budget_bytes=int(args.memory_budget_mb * 2**20),
        session_reap_interval_s=args.session_reap_interval,
        url_prefix=args.url_prefix,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        admin_credentials=load_credentials(args.admin_config),
        engine=args.engine,
        model_engines=dict(args.model_engine),
        inference_threads=args.inference_threads,
        interactive_workers=args.interactive_workers,
        interactive_queue=args.interactive_queue,
        batch_workers=args.batch_workers,
        batch_queue=args.batch_queue,
        warm_up=not args.no_warm_up,
        archive_limits=ArchiveLimits(
            max_files=args.archive_max_files,
            max_bytes=int(args.archive_max_mb * 2**20),
            max_ratio=args.archive_max_ratio,
        ),
    )


def split_list(value: str) -> tuple[str, ...]:
    """`a, b,c` → ("a", "b", "c")."""
    return tuple(item.strip() for item in value.split(",") if item.strip())


def add_serve_arguments(p: argparse.ArgumentParser, defaults: Settings) -> None:
    """Every flag of `aiaa serve`, defaulting to `Settings()` (and so to its environment variables)."""
    p.add_argument("--host", default=defaults.host)
    p.add_argument("--port", type=int, default=defaults.port)
    p.add_argument("--model-repo", default=str(defaults.model_repo), help="model repository folder")
    p.add_argument("--app-dir", default=str(defaults.app_dir), help="the MONAI Label app whose models to serve")
    p.add_argument("--models", default=defaults.app_models, help="the app's models to serve (comma separated)")
    p.add_argument("--log-dir", default=str(defaults.log_dir))
    p.add_argument(
        "--max-upload-mb",
        type=float,
        default=defaults.max_upload_bytes / 2**20,
        help="largest request body accepted (MB); larger uploads get 413",
    )
    p.add_argument("--url-prefix", default=defaults.url_prefix, help="also serve every route under this path")
    p.add_argument("--threads", type=int, default=defaults.threads, help="request worker threads")
    add_connection_arguments(p, defaults)
    p.add_argument(
        "--admin-config",
        type=Path,
        help='JSON file {"user", "password", "token"} with the admin credentials (AIAA_ADMIN_* env vars win)',
    )
    p.add_argument(
        "--archive-max-files",
        type=int,
        default=defaults.archive_limits.max_files,
        help="most files a model archive may hold",
    )
    p.add_argument(
        "--archive-max-mb",
        type=float,
        default=defaults.archive_limits.max_bytes / 2**20,
        help="most MB a model archive may unpack to",
    )
    p.add_argument(
        "--archive-max-ratio",
        type=float,
        default=defaults.archive_limits.max_ratio,
        help="largest unpacked/packed size ratio of a model archive (compression bombs)",
    )
    p.add_argument("--session-dir", default=str(defaults.session_dir), help="where session files live")
    p.add_argument(
        "--datastore", default=str(defaults.datastore_dir), help="annotation datastore: images and labels to train on"
    )
    p.add_argument(
        "--redis",
        default=defaults.redis_url,
        metavar="URL",
        help="keep sessions in this Redis (redis://host:port/db; default AIAA_REDIS_URL, else in memory)",
    )
    p.add_argument(
        "--ray",
        default=defaults.ray_address,
        metavar="ADDRESS",
        help="infer on this Ray cluster through Ray Serve (host:port; default AIAA_RAY_ADDRESS, else in-process)",
    )
    p.add_argument("--ray-min-replicas", type=int, default=defaults.ray_min_replicas, help="fewest replicas per model")
    p.add_argument("--ray-max-replicas", type=int, default=defaults.ray_max_replicas, help="most replicas per model")
    p.add_argument(
        "--ray-replicas-per-node",
        type=int,
        default=defaults.ray_replicas_per_node,
        help="at most this many replicas of one model per Ray node (0: no limit)",
    )
    p.add_argument("--ray-replica-cpus", type=float, default=defaults.ray_replica_cpus, help="Ray CPUs per replica")
    p.add_argument(
        "--model-poll-s",
        type=float,
        default=defaults.model_poll_s,
        help="re-read a model repository shared with other replicas every N s (default 5 with --redis, else never)",
    )
    p.add_argument(
        "--session-expiry",
        type=float,
        default=defaults.session_expiry_s,
        help="seconds a session lives after its last use when the client asks for no expiry",
    )
    p.add_argument(
        "--session-max-expiry",
        type=float,
        default=defaults.session_max_expiry_s,
        help="upper bound on any session's expiry (seconds)",
    )
    p.add_argument(
        "--session-max-mb",
        type=float,
        default=defaults.session_max_bytes / 2**20,
        help="total decoded image memory all sessions may hold (MB)",
    )
    p.add_argument(
        "--memory-budget-mb",
        type=float,
        default=defaults.memory_budget_bytes / 2**20,
        help="memory the running requests may use together: half for each lane, split among its workers; "
        "more is a 413 before anything is allocated (MB; default from AIAA_MEMORY_BUDGET_MB, else 12288)",
    )
    p.add_argument(
        "--session-reap-interval",
        type=float,
        default=defaults.session_reap_interval_s,
        help="seconds between sweeps that delete expired sessions and their files",
    )
    add_inference_arguments(p, defaults)


def model_engine(value: str) -> tuple[str, str]:
    """`--model-engine NAME=ENGINE`."""
    name, sep, engine = value.partition("=")
    if not sep or not name or engine not in ENGINE_CHOICES:
        raise argparse.ArgumentTypeError(f"expected NAME=ENGINE with ENGINE one of {', '.join(ENGINE_CHOICES)}")
    return name, engine


ENGINE_CHOICES = tuple(EngineName)  # argparse choices: the engines, spelled once in server/vocabularies.py


def add_connection_arguments(p: argparse.ArgumentParser, defaults: Settings) -> None:
    """Connections and browsers (waitress_options above, server/origins.py)."""
    p.add_argument(
        "--connection-limit",
        type=int,
        default=defaults.connection_limit,
        help="connections served at once (more wait in the listen backlog)",
    )
    p.add_argument(
        "--channel-timeout",
        type=float,
        default=defaults.channel_timeout_s,
        help="seconds a connection may stay silent before it is closed",
    )
    p.add_argument(
        "--allowed-hosts",
        default=",".join(defaults.allowed_hosts),
        help="Host header names served, comma separated ('.example.org' adds subdomains, '*' any); "
        "default: the loopback names on a loopback bind, any elsewhere (DNS rebinding)",
    )
    p.add_argument(
        "--cors-origins",
        default=",".join(defaults.cors_origins),
        help="browser origins allowed to call the API (CORS), comma separated, e.g. https://viewer.example.org; "
        "default none",
    )


def add_inference_arguments(p: argparse.ArgumentParser, defaults: Settings) -> None:
    """Engines and scheduling (aiaa_core/engines.py, server/scheduler.py)."""
    p.add_argument("--engine", default=defaults.engine, choices=ENGINE_CHOICES, help="what runs the networks")
    p.add_argument(
        "--model-engine",
        type=model_engine,
        action="append",
        default=[],
        metavar="NAME=ENGINE",
        help="engine for one model (repeatable), e.g. deepgrow_3d=torch",
    )
    p.add_argument(
        "--inference-threads",
        type=int,
        default=defaults.inference_threads,
        help="threads one inference may use (0: the cores present, shared out while several run)",
    )
    p.add_argument(
        "--interactive-workers",
        type=int,
        default=defaults.interactive_workers,
        help="clicks/extreme points inferred at once",
    )
    p.add_argument(
        "--interactive-queue",
        type=int,
        default=defaults.interactive_queue,
        help="clicks that may wait for a worker; more get 503 with Retry-After",
    )
    p.add_argument("--batch-workers", type=int, default=defaults.batch_workers, help="segmentations run at once")
    p.add_argument(
        "--batch-queue", type=int, default=defaults.batch_queue, help="segmentations that may wait; more get 503"
    )
    p.add_argument("--no-warm-up", action="store_true", help="do not build the engines before serving")
