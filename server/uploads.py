"""Turn a request's file part(s) and `params` field into a decoded image and a params dict."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import SimpleITK as sitk
from flask import current_app, request

from .app_context import session_store
from .budget import MemoryLedger, Plan, request_limit
from .errors import BadRequest
from .image_names import upload_basename
from .image_reading import read_image
from .params import parse_params, query_text

SERIES_PART = re.compile(r"image\d+$")
UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]")


def upload_parts() -> list:
    """The uploaded image part(s): `datapoint` (Python client, Slicer), `image`, `files` (MONAI Label's
    session upload), or `image0..N` (a series)."""
    for name in ("datapoint", "image", "files"):
        if name in request.files:
            return request.files.getlist(name)
    series = sorted((k for k in request.files if SERIES_PART.match(k)), key=lambda k: int(k[5:]))
    return [request.files[k] for k in series]


def request_ledger(plan: Plan | None = None, *, batch: bool = False) -> MemoryLedger:
    """A fresh memory ledger holding one request's share of the server's memory budget (`plan`: what the
    request will make of its image, charged with the image's header; `batch`: it runs in the batch lane)."""
    settings = current_app.config["SETTINGS"]
    limit = request_limit(
        settings.memory_budget_bytes, settings.interactive_workers, settings.batch_workers, batch=batch
    )
    return MemoryLedger(limit, plan)


def request_image(ledger: MemoryLedger | None = None) -> sitk.Image:
    """The image a request works on: its session's decoded image when `session_id` is given, else the upload
    (its decoded size charged to `ledger`, by default a fresh one for this request)."""
    if session_id := query_text("session_id"):
        return session_store().get(session_id).image
    return read_uploaded_image(current_app.config["SETTINGS"].max_image_voxels, ledger or request_ledger())


def save_uploaded_parts(folder: Path) -> list[Path]:
    """Save the uploaded image part(s) under `folder` with harmless names that keep their extensions."""
    parts = upload_parts()
    if not parts:
        raise BadRequest(
            "No image in the request: attach the volume as the 'datapoint' (or 'image') file part, "
            "or give a session_id."
        )
    paths = []
    for index, part in enumerate(parts):
        subfolder = folder / str(index)  # one folder per part: clients may repeat a file name
        subfolder.mkdir(parents=True)
        path = subfolder / safe_name(part.filename or "")
        part.save(path)
        paths.append(path)
    return paths


def read_uploaded_image(max_voxels: int, ledger: MemoryLedger | None = None) -> sitk.Image:
    """Decode the uploaded volume (or DICOM series) with its full geometry."""
    with tempfile.TemporaryDirectory(prefix="aiaa-upload-") as tmp:
        return read_image(save_uploaded_parts(Path(tmp)), max_voxels=max_voxels, ledger=ledger)


def safe_name(filename: str) -> str:
    """The client's file name reduced to a harmless basename that keeps its extension(s)."""
    name = UNSAFE_CHARS.sub("_", upload_basename(filename)).lstrip(".")
    return name or "upload"


def request_params() -> dict:
    """The `params` field as a dict, checked (`server.params.parse_params`): absent → {}, else a JSON object."""
    return parse_params(request.form.get("params"))
