"""Sessions: `PUT /session/`, `GET /session/<id>`, `DELETE /session/<id>`."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from flask import Blueprint, current_app, jsonify

from .. import params as checked
from ..budget import MemoryLedger
from ..errors import NotFound, SessionExpired
from ..image_headers import ImageHeader
from ..image_reading import read_image
from ..openapi import SESSION_FORM, SESSION_INFO_REF, Param, document, json_reply
from ..scheduler import Work
from ..sessions import SessionStore
from ..uploads import request_ledger, save_uploaded_parts, upload_basename, upload_parts
from . import scheduler, session_store

bp = Blueprint("sessions", __name__)


class SessionLedger:
    """The request's memory ledger, and room in the session store: a full store refuses before decoding."""

    def __init__(self, ledger: MemoryLedger, sessions: SessionStore):
        self.ledger, self.sessions = ledger, sessions

    def charge_image(self, header: ImageHeader) -> None:
        self.sessions.require_room(header.nbytes)
        self.ledger.charge_image(header)


def requested_expiry() -> float | None:
    """Seconds, finite and not negative (0 or absent: the default)."""
    return checked.query_number("expiry", minimum=0)


@bp.put("/session/")
@document(
    query=[
        Param(
            "expiry",
            "Seconds it lives after its last use (0 or absent: the default; capped).",
            {"type": "number", "minimum": 0},
        ),
        Param("uncompress", "'true' when the upload is a zip of a DICOM series.", {"type": "boolean"}),
    ],
    body=SESSION_FORM,
    reply=json_reply(
        "The new session.",
        {"type": "object", "properties": {"session_id": {"type": "string"}, "session_info": SESSION_INFO_REF}},
    ),
    errors=(400, 413, 415, 503),
)
def create_session():
    """Decode the uploaded volume (file, `image0..N` series or zip) once and keep it for later requests."""
    expiry = requested_expiry()
    checked.query_flag("uncompress")  # a zip is recognised by its name; the flag is checked, not needed
    incoming = session_store().root / "incoming"
    incoming.mkdir(exist_ok=True)
    folder = Path(tempfile.mkdtemp(dir=incoming))
    try:
        paths = save_uploaded_parts(folder)
        with scheduler().run(Work.DECODE):
            ledger = SessionLedger(request_ledger(), session_store())
            image = read_image(paths, max_voxels=current_app.config["SETTINGS"].max_image_voxels, ledger=ledger)
        session = session_store().create(image, folder, upload_basename(upload_parts()[0].filename or ""), expiry)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return jsonify({"session_id": session.id, "session_info": session.info()})


@bp.get("/session/<session_id>")
@document(
    query=[Param("update_ts", "'true' to count this as a use (refreshes the expiry).", {"type": "boolean"})],
    reply=json_reply("The session's image geometry and timestamps.", SESSION_INFO_REF),
    errors=(404,),
)
def get_session(session_id: str):
    """The session's information while it lives; 404 once unknown or expired."""
    touch = checked.query_flag("update_ts")
    try:
        session = session_store().get(session_id, touch=touch)
    except SessionExpired as exc:
        raise NotFound(exc.message) from None
    return jsonify(session.info())


@bp.delete("/session/<session_id>")
@document(reply=json_reply("Deleted, or already gone.", {"properties": {"deleted": {"type": "boolean"}}}))
def delete_session(session_id: str):
    """Delete the session and its files."""
    deleted = session_store().delete(session_id)
    return jsonify({"session_id": session_id, "deleted": deleted})
