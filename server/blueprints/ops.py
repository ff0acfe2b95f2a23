"""Operations: liveness for load balancers and the Docker HEALTHCHECK."""

from __future__ import annotations

from flask import Blueprint, jsonify

from .. import __version__

bp = Blueprint("ops", __name__)


@bp.get("/health")
def health():
    return jsonify({"status": "ok", "version": __version__})
