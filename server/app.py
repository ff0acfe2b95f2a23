"""The Flask application factory: settings in, a WSGI app with its blueprints and JSON errors out.

`create_app` builds and starts nothing that runs on its own: no thread, no process-wide setting. Two apps
with different settings live side by side in one process. `start_background(app)` starts the app's
background work (the session reaper); `aiaa serve` calls it, as do tests that serve an app in-process.
"""

from __future__ import annotations

import logging
import threading
import time

from flask import Flask, g, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.middleware.proxy_fix import ProxyFix

from aiaa_core.engines import EngineSettings

from .auth import effective_credentials
from .backends import BackendCollector, BackendKind, open_backend
from .blueprints import admin, dashboard, inference, ops, polygons, sessions
from .errors import ApiError, PayloadTooLarge
from .inference import warm_up
from .logs import loggable, session_tag
from .metrics import Metrics
from .model_sync import poll_interval, start_model_sync
from .monailabel_api import register as register_monailabel
from .origins import register_origin_policy
from .params import MAX_PARAMS_BYTES
from .registry import ModelRegistry
from .scheduler import Scheduler
from .session_stores import open_session_store
from .settings import Settings

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, registry: ModelRegistry | None = None) -> Flask:
    """Build the app; the registry is loaded from `settings` unless one is given (tests)."""
    settings = settings or Settings()
    app = Flask(__name__)
    app.config["SETTINGS"] = settings
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes
    # A non-file form field is held in memory: past twice the params limit Werkzeug stops reading (413);
    # below, server/params.py answers with its own precise 400.
    app.config["MAX_FORM_MEMORY_SIZE"] = 2 * MAX_PARAMS_BYTES
    app.url_map.strict_slashes = False  # the AIAA clients do not follow redirects
    engines = engine_settings(settings)
    app.extensions["aiaa.engines"] = engines
    if registry is None:
        shared = poll_interval(settings) > 0  # other replicas follow the same folder (server/model_sync.py)
        registry = ModelRegistry.open(
            settings.model_repo, settings.app_dir, settings.app_models, settings.device, engines, shared=shared
        )
    app.extensions["aiaa.registry"] = registry
    app.extensions["aiaa.admin_credentials"] = effective_credentials(settings.admin_credentials, settings.host)
    store = open_session_store(settings)  # in memory, or Redis in the cluster mode
    app.extensions["aiaa.sessions"] = store
    app.extensions["aiaa.metrics"] = Metrics(registry, store)
    backend = open_backend(settings)  # in-process, or Ray Serve in the cluster mode (joins it when first used)
    app.extensions["aiaa.backend"] = backend
    app.extensions["aiaa.metrics"].registry.register(BackendCollector(backend))
    app.extensions["aiaa.scheduler"] = Scheduler(
        settings.interactive_workers,
        settings.interactive_queue,
        settings.batch_workers,
        settings.batch_queue,
        threads=settings.inference_threads,
    )
    if settings.warm_up and backend.kind == BackendKind.IN_PROCESS:  # Ray Serve replicas warm up their own
        warm_up(registry.list(), settings.device)
    register_origin_policy(app, settings)  # first: an unlisted Host or origin gets nothing else
    for blueprint in (inference.bp, sessions.bp, polygons.bp, ops.bp, dashboard.bp, admin.bp):
        app.register_blueprint(blueprint)
    register_monailabel(app)  # MONAI Label's API under /monailabel, and PUT /v1/label (server/monailabel_api)
    register_error_handlers(app)
    register_request_log(app)

    @app.before_request
    def refuse_oversize_uploads():
        """Refuse by the declared length, before anything reads (and buffers) the body."""
        if request.content_length is not None and request.content_length > settings.max_upload_bytes:
            raise PayloadTooLarge(too_large_message(settings.max_upload_bytes))

    # Clients keep any path prefix of the server URL: honour a proxy's X-Forwarded-Prefix, or serve under
    # a configured prefix directly (http://host/aiaa/v1/models).
    app.wsgi_app = ProxyFix(app.wsgi_app, x_for=0, x_proto=0, x_host=0, x_prefix=1)
    if settings.url_prefix:
        app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {settings.url_prefix.rstrip("/"): app.wsgi_app})
    return app


def engine_settings(settings: Settings) -> EngineSettings:
    """The server's engine choices (`--engine`, `--model-engine`, `--inference-threads`) for the models it builds."""
    return EngineSettings(settings.engine, settings.model_engines, settings.inference_threads)


def start_background(app: Flask) -> list[threading.Thread]:
    """Start the app's background threads (the session reaper), once; return those started now."""
    if app.extensions.get("aiaa.background") is not None:
        return []
    settings = app.config["SETTINGS"]
    started = [app.extensions["aiaa.sessions"].start_reaper(settings.session_reap_interval_s)]
    app.extensions["aiaa.backend"].start()  # Ray Serve: join the cluster (each model deploys on first use)
    in_process = app.extensions["aiaa.backend"].kind == BackendKind.IN_PROCESS  # Ray replicas warm up their own
    sync = start_model_sync(app.extensions["aiaa.registry"], settings, warm_up=settings.warm_up and in_process)
    if sync is not None:  # replicas sharing the model repository follow each other's installs
        app.extensions["aiaa.model_sync"] = sync
        started.append(sync.thread)
    app.extensions["aiaa.background"] = started
    return started


def too_large_message(limit: int) -> str:
    """The limit as applied (`aiaa serve` gives waitress the same one), in MB as configured and in bytes."""
    megabytes = f"{limit / 1024**2:.2f}".rstrip("0").rstrip(".")
    return f"The upload is too large; this server accepts at most {megabytes} MB ({limit} bytes)."


def register_request_log(app: Flask) -> None:
    """One structured line per request, and its metrics.

    Never bodies or file names; the route, not the path (`/session/<session_id>`), and the session as
    its tag (`server.logs.session_tag`): whoever reads the log cannot use another clinician's session.
    """
    request_log = logging.getLogger("aiaa.requests")

    @app.before_request
    def start_timer():
        g.started = time.perf_counter()

    @app.after_request
    def log_request(response):
        latency_s = time.perf_counter() - g.get("started", time.perf_counter())
        app.extensions["aiaa.metrics"].observe_request(request, response, latency_s)
        latency_ms = latency_s * 1000
        session_id = (request.view_args or {}).get("session_id") or request.args.get("session_id")
        request_log.info(
            "method=%s path=%s model=%s session=%s status=%d bytes=%s latency_ms=%.1f",
            request.method,
            request.url_rule.rule if request.url_rule else loggable(request.path),
            loggable(request.args.get("model", "-")),
            session_tag(session_id) if session_id else "-",
            response.status_code,
            response.content_length if response.content_length is not None else "-",
            latency_ms,
        )
        return response


def register_error_handlers(app: Flask) -> None:
    """Every error leaves as the contract's JSON body: {"error": {"type", "message"}, "success": false}."""

    @app.errorhandler(ApiError)
    def api_error(error: ApiError):
        logger.info("%s %s", error.status, error.type)  # not the message: it can name the uploaded file
        return jsonify(error.to_json()), error.status, error.headers

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        message = error.description or error.name
        if isinstance(error, RequestEntityTooLarge):
            declared = request.content_length
            if declared is not None and declared <= app.config["MAX_CONTENT_LENGTH"]:  # a form field, not the body
                limit = app.config["MAX_FORM_MEMORY_SIZE"]
                message = f"A form field (such as 'params') is over this server's limit of {limit} bytes."
            else:
                message = too_large_message(app.config["MAX_CONTENT_LENGTH"])
        body = ApiError(message, status=error.code, type=error.name.replace(" ", "")).to_json()
        return jsonify(body), error.code

    @app.errorhandler(Exception)
    def internal_error(error: Exception):
        logger.exception("unhandled error")
        body = ApiError(f"Internal server error ({type(error).__name__}); see the server log.").to_json()
        return jsonify(body), 500
