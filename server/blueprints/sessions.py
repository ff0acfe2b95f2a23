"""Sessions: `PUT /session/`, `GET /session/<id>`, `DELETE /session/<id>`."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from flask import Blueprint, current_app, jsonify, request

from ..errors import BadRequest, NotFound, SessionExpired
from ..imageio import read_image
from ..sessions import SessionStore
from ..uploads import save_uploaded_parts, upload_basename, upload_parts

bp = Blueprint("sessions", __name__)


def store() -> SessionStore:
    return current_app.extensions["aiaa.sessions"]


def requested_expiry() -> float | None:
    raw = request.args.get("expiry")
    if raw in (None, ""):
        return None
    try:
        return float(raw)
    except ValueError:
        raise BadRequest(f"'expiry' must be a number of seconds, not '{raw}'.") from None


@bp.put("/session/")
def create_session():
    """Decode the uploaded volume (file, `image0..N` series or zip) once and keep it for later requests."""
    expiry = requested_expiry()
    incoming = store().root / "incoming"
    incoming.mkdir(exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=incoming))
    try:
        paths = save_uploaded_parts(folder)
        image = read_image(paths, max_voxels=current_app.config["SETTINGS"].max_image_voxels)
        session = store().create(image, folder, upload_basename(upload_parts()[0].filename or ""), expiry)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return jsonify({"session_id": session.id, "session_info": session.info()})


@bp.get("/session/<session_id>")
def get_session(session_id: str):
    touch = request.args.get("update_ts", "").lower() in ("1", "true", "yes")
    try:
        session = store().get(session_id, touch=touch)
    except SessionExpired as exc:
        raise NotFound(exc.message) from None
    return jsonify(session.info())


@bp.delete("/session/<session_id>")
def delete_session(session_id: str):
    deleted = store().delete(session_id)
    return jsonify({"session_id": session_id, "deleted": deleted})
