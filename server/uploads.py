"""Turn a request's file part(s) and `params` field into a decoded image and a params dict."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import SimpleITK as sitk
from flask import current_app, request

from .errors import BadRequest
from .imageio import read_image, upload_basename

SERIES_PART = re.compile(r"image\d+$")
UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]")


def upload_parts() -> list:
    """The uploaded image part(s): `datapoint` (Python client, Slicer), `image`, or `image0..N` (a series)."""
    for name in ("datapoint", "image"):
        if name in request.files:
            return request.files.getlist(name)
    series = sorted((k for k in request.files if SERIES_PART.match(k)), key=lambda k: int(k[5:]))
    return [request.files[k] for k in series]


def request_image() -> sitk.Image:
    """The image a request works on: its session's decoded image when `session_id` is given, else the upload."""
    if session_id := request.args.get("session_id"):
        return current_app.extensions["aiaa.sessions"].get(session_id).image
    return read_uploaded_image(current_app.config["SETTINGS"].max_image_voxels)


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


def read_uploaded_image(max_voxels: int) -> sitk.Image:
    """Decode the uploaded volume (or DICOM series) with its full geometry."""
    with tempfile.TemporaryDirectory(prefix="aiaa-upload-") as tmp:
        return read_image(save_uploaded_parts(Path(tmp)), max_voxels=max_voxels)


def safe_name(filename: str) -> str:
    """The client's file name reduced to a harmless basename that keeps its extension(s)."""
    name = UNSAFE_CHARS.sub("_", upload_basename(filename)).lstrip(".")
    return name or "upload"


def request_params() -> dict:
    """The `params` field as a dict: absent → {}, not JSON or not an object → 400."""
    raw = request.form.get("params")
    if raw is None or raw.strip() == "":
        return {}
    try:
        params = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"The 'params' field is not valid JSON ({exc.msg} at position {exc.pos}).") from None
    if isinstance(params, str):  # older clients double-encode
        try:
            params = json.loads(params)
        except json.JSONDecodeError:
            pass
    if not isinstance(params, dict):
        raise BadRequest("The 'params' field must be a JSON object, e.g. {} or {\"points\": [[x, y, z], ...]}.")
    return params
