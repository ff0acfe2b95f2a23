"""Operations: liveness and readiness, Prometheus metrics, the server log (admin only), and the API's own
description."""

from __future__ import annotations

import html
from collections import deque

from flask import Blueprint, Response, current_app, jsonify, render_template, request, url_for
from prometheus_client import CONTENT_TYPE_LATEST

from .. import __version__
from ..auth import admin_required
from ..errors import NotFound, ServiceUnavailable
from ..logs import LOG_FILE
from ..metrics import app_metrics, refused_models
from ..openapi import Param, build_spec, document, json_reply, text_reply
from ..params import query_flag, query_int
from . import registry, session_store

bp = Blueprint("ops", __name__)
DEFAULT_LOG_LINES = 100
MAX_LOG_LINES = 10_000


@bp.get("/health")
@document(reply=json_reply("The process is up.", {"type": "object", "properties": {"status": {"type": "string"}}}))
def health():
    """Liveness: the process answers (for load balancers and the Docker HEALTHCHECK)."""
    return jsonify({"status": "ok", "version": __version__})


@bp.get("/ready")
@document(
    reply=json_reply(
        "Every served model is loaded; `refused` names installed models that today's checks refused at start-up.",
        {
            "type": "object",
            "properties": {
                "status": {"type": "string"},
                "models": {"type": "array", "items": {"type": "string"}},
                "refused": {"type": "array", "items": {"type": "string"}},
            },
        },
    ),
    errors=(503,),
)
def ready():
    """Readiness: 200 when every served model is loaded, 503 while any is loading or has failed.

    A model refused at start-up (it fails today's upload checks) is listed in `refused` but keeps the server
    ready: it stays refused until an admin installs a new version, and a load balancer that took the whole
    server out of rotation for it would stop the models that do serve. Names only here (anyone may ask);
    the reasons are on the admin dashboard.
    """
    models = [model.info() for model in registry().list()]
    waiting = [m for m in models if m.get("status", "ready") != "ready"]
    if waiting:
        states = ", ".join(
            f"{m['name']} ({m.get('status')}{': ' + str(m['error']) if m.get('error') else ''})" for m in waiting
        )
        raise ServiceUnavailable(f"Not ready: {len(waiting)} of {len(models)} models are not loaded: {states}.")
    refused = [item["name"] for item in refused_models(registry())]
    reply = {"status": "ready", "models": [m["name"] for m in models], "refused": refused}
    return jsonify({**reply, **cluster_state()})


def cluster_state() -> dict:
    """Where sessions live and where models run (the cluster mode: Redis, Ray Serve replicas)."""
    state = {"store": session_store().describe()}
    backend = current_app.extensions.get("aiaa.backend")
    if backend is not None:
        state["backend"] = backend.describe()
    model_sync = current_app.extensions.get("aiaa.model_sync")  # replicas sharing the model repository
    if model_sync is not None:
        state["model_sync"] = model_sync.describe()
    return state


@bp.get("/metrics")
@document(reply=text_reply("Prometheus text exposition format."))
def metrics():
    """Prometheus metrics: requests, latency, inference stages, sessions, models, process."""
    return Response(app_metrics().exposition(), content_type=CONTENT_TYPE_LATEST)


@bp.get("/logs")
@bp.get("/logs/")
@admin_required
@document(
    query=[
        Param(
            "lines",
            f"How many of the last lines to return (default {DEFAULT_LOG_LINES}, at most {MAX_LOG_LINES}).",
            {"type": "integer", "minimum": 1, "maximum": MAX_LOG_LINES},
        ),
        Param("html", "'true' for a page that refreshes itself every 5 s.", {"type": "boolean"}),
    ],
    reply={
        "description": "The last lines of the server log.",
        "content": {"text/plain": {"schema": {"type": "string"}}, "text/html": {"schema": {"type": "string"}}},
    },
    errors=(400, 404),
)
def logs():
    """The last `lines` lines of the server log as text; `html=true` gives a page that refreshes itself.

    Admin credentials are required, as for the dashboard: the AIAA clients never call it.
    """
    count = query_int("lines", DEFAULT_LOG_LINES, minimum=1, maximum=MAX_LOG_LINES)
    as_html = query_flag("html")
    path = current_app.config["SETTINGS"].log_dir / LOG_FILE
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = "".join(deque(f, maxlen=count))
    except FileNotFoundError:
        raise NotFound("This server writes no log file (it was not started with `aiaa serve`).") from None
    if as_html:
        page = (
            '<!doctype html><html><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">'
            f"<title>AIAA server log</title></head><body><pre>{html.escape(text)}</pre></body></html>"
        )
        return Response(page, mimetype="text/html")
    return Response(text, mimetype="text/plain")


@bp.get("/openapi.json")
@document(reply=json_reply("The OpenAPI 3 document."))
def openapi_json():
    """This API as an OpenAPI 3 document, generated from the routes the server has now."""
    return jsonify(build_spec(current_app, request.script_root or "/"))


@bp.get("/docs")
@document(reply=text_reply("Swagger UI page.", "text/html"))
def docs():
    """Interactive API documentation (Swagger UI, served locally) of /openapi.json."""
    return render_template("docs.html", spec_url=url_for("ops.openapi_json"))
