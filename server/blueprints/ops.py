"""Operations: liveness for load balancers and the Docker HEALTHCHECK, and the server log."""

from __future__ import annotations

import html
from collections import deque

from flask import Blueprint, Response, current_app, jsonify, request

from .. import __version__
from ..errors import BadRequest
from ..logs import LOG_FILE

bp = Blueprint("ops", __name__)
DEFAULT_LOG_LINES = 100


@bp.get("/health")
def health():
    return jsonify({"status": "ok", "version": __version__})


@bp.get("/logs")
@bp.get("/logs/")
def logs():
    """The last `lines` lines of the server log as text; `html=true` gives a page that refreshes itself."""
    try:
        count = int(request.args.get("lines", DEFAULT_LOG_LINES))
    except ValueError:
        raise BadRequest("'lines' must be a whole number.") from None
    if count < 1:
        raise BadRequest("'lines' must be at least 1.")
    path = current_app.config["SETTINGS"].log_dir / LOG_FILE
    with open(path, encoding="utf-8", errors="replace") as f:
        text = "".join(deque(f, maxlen=count))
    if request.args.get("html", "").lower() in ("1", "true", "yes"):
        page = (
            '<!doctype html><html><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">'
            f"<title>AIAA server log</title></head><body><pre>{html.escape(text)}</pre></body></html>"
        )
        return Response(page, mimetype="text/html")
    return Response(text, mimetype="text/plain")
