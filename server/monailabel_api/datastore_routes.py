"""MONAI Label's `/datastore/` and `/activelearning/{strategy}` on the annotation datastore.

Writes (images, labels) and deletions need the admin's credentials (`server.auth`), and so do reads of
patient data (image and label downloads, the full listing); the counts (`output=stats`) and the next
sample's id are open, like `/info/`. Every upload is decoded by the bounded reader in the scheduler's
decode lane, its voxels charged to the request's memory budget, before anything is stored.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import SimpleITK as sitk
from flask import Blueprint, current_app, jsonify, request, send_file

from .. import params as checked
from ..blueprints import scheduler
from ..errors import BadRequest, NotFound, PayloadTooLarge
from ..image_reading import read_image
from ..openapi import BINARY, PARAMS_FIELD, Param, document, form_body, json_reply
from ..params import MAX_PARAMS_BYTES
from ..scheduler import Work
from ..uploads import request_ledger, request_params, safe_name
from . import PREFIX, annotation_store
from .auth_routes import admin_or_token
from .datastore import check_image_id, check_tag, content_id

bp = Blueprint("monailabel_datastore", __name__, url_prefix=PREFIX)

MAX_INFO_BYTES = 64 * 1024  # the `params` a client attaches to an image or label, stored in the datastore's JSON
OUTPUTS = ("stats", "all", "train")
IMAGE_PARAM = Param("image", "Datastore image id.", required=True)
TAG_PARAM = Param("tag", "Label tag (default 'final').")
UPLOAD_FORM = form_body(
    {"params": PARAMS_FIELD, "file": {**BINARY, "description": "The image (NIfTI, NRRD, MHA, DICOM .zip)"}},
    required=["file"],
)
LABEL_FORM = form_body(
    {"params": PARAMS_FIELD, "label": {**BINARY, "description": "The label map, on the image's grid"}},
    required=["label"],
)


def json_body() -> dict:
    """The request's JSON object body (MONAI Label's clients send their options so), bounded like `params`."""
    if (request.content_length or 0) > MAX_PARAMS_BYTES:
        raise PayloadTooLarge(f"The JSON body is over this server's limit of {MAX_PARAMS_BYTES} bytes.")
    raw = request.stream.read(MAX_PARAMS_BYTES + 1)  # bounded even without a Content-Length
    if len(raw) > MAX_PARAMS_BYTES:
        raise PayloadTooLarge(f"The JSON body is over this server's limit of {MAX_PARAMS_BYTES} bytes.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("The body is not UTF-8 text; send a JSON object.") from None
    body = checked.load_json(text, "body") if text.strip() else {}
    if not isinstance(body, dict):
        raise BadRequest('The body must be a JSON object, e.g. {} or {"max_epochs": 2}.')
    return body


def stored_info(params: dict) -> dict:
    """The client's params as the stored info: a bounded JSON object (already depth- and size-checked)."""
    if len(json.dumps(params)) > MAX_INFO_BYTES:
        raise BadRequest(f"'params' is over {MAX_INFO_BYTES} bytes; the datastore keeps small info only.")
    return params


def decode_part(name: str) -> sitk.Image:
    """The uploaded file part `name`, decoded in the decode lane within the request's memory share."""
    part = request.files.get(name)
    if part is None:
        raise BadRequest(f"No '{name}' file part in the request.")
    with scheduler().run(Work.DECODE), tempfile.TemporaryDirectory(prefix="aiaa-ml-") as tmp:
        path = Path(tmp) / safe_name(part.filename or f"{name}.nii.gz")
        part.save(path)
        return read_image([path], max_voxels=current_app.config["SETTINGS"].max_image_voxels, ledger=request_ledger())


def relative_datalist() -> list[dict]:
    """MONAI Label's training datalist with names relative to the datastore (never the server's paths)."""
    root = annotation_store().root.resolve()
    return [
        {k: str(Path(v).resolve().relative_to(root)) for k, v in item.items()} for item in annotation_store().datalist()
    ]


@bp.get("/datastore/")
@document(
    query=[Param("output", "stats (default, open), all or train (admin).", {"type": "string", "enum": list(OUTPUTS)})],
    reply=json_reply(
        "Counts, the whole datastore (objects), or the training datalist (a list).",
        {"oneOf": [{"type": "object"}, {"type": "array", "items": {"type": "object"}}]},
    ),
    errors=(400, 401),
)
def datastore():
    """The datastore: its counts (open), or with credentials every image and label (output=all|train)."""
    output = checked.query_text("output", "stats", choices=OUTPUTS)
    if output == "stats":
        return jsonify(annotation_store().status())
    return _datastore_listing(output)


@admin_or_token
def _datastore_listing(output: str):
    return jsonify(annotation_store().json() if output == "all" else relative_datalist())


@bp.put("/datastore/")
@bp.put("/datastore/image")
@admin_or_token
@document(query=[Param("image", "Id to store it under (default: derived from the voxels).")], body=UPLOAD_FORM,
          reply=json_reply("The stored image's id."), errors=(400, 401, 413, 415), admin=True)  # fmt: skip
def add_image():
    """Upload an image into the datastore (admin)."""
    image_id = checked.query_text("image")
    if image_id is not None:
        check_image_id(image_id)
    info = stored_info(request_params())
    image = decode_part("file")
    image_id = annotation_store().add_image(image_id or content_id(image), image, info)
    return jsonify({"image": image_id})


@bp.delete("/datastore/")
@bp.delete("/datastore/image")
@admin_or_token
@document(query=[Param("id", "Datastore image id.", required=True)], reply=json_reply("{}"), errors=(401, 404),
          admin=True)  # fmt: skip
def remove_image():
    """Remove an image and its labels (admin)."""
    annotation_store().remove_image(check_image_id(checked.query_text("id")))
    return jsonify({})


@bp.get("/datastore/image")
@admin_or_token
@document(query=[IMAGE_PARAM], reply={"description": "The image file (NIfTI)."}, errors=(401, 404), admin=True)
def download_image():
    """Download a datastore image (admin: patient data)."""
    path = annotation_store().image_path(check_image_id(checked.query_text("image")))
    return send_file(path, mimetype="application/octet-stream", as_attachment=True, download_name=path.name)


@bp.get("/datastore/image/info")
@admin_or_token
@document(query=[IMAGE_PARAM], reply=json_reply("The image's stored info."), errors=(401, 404), admin=True)
def image_info():
    """The stored info of a datastore image (admin)."""
    image_id = check_image_id(checked.query_text("image"))
    annotation_store().image_path(image_id)
    listing = annotation_store().json()["objects"].get(image_id, {})
    return jsonify(listing.get("image", {}).get("info", {}))


@bp.put("/datastore/label")
@admin_or_token
@document(query=[IMAGE_PARAM, TAG_PARAM], body=LABEL_FORM, reply=json_reply("The image and label ids."),
          errors=(400, 401, 404, 413, 415), admin=True)  # fmt: skip
def save_label():
    """Save a clinician's label for a datastore image (admin); tag 'final' labels are what training reads."""
    image_id = check_image_id(checked.query_text("image"))
    tag = check_tag(checked.query_text("tag"))
    info = stored_info(request_params())
    annotation_store().image_path(image_id)  # 404 before decoding
    label = decode_part("label")
    label_id = annotation_store().save_label(image_id, label, tag, info)
    return jsonify({"image": image_id, "label": label_id, "tag": tag})


@bp.delete("/datastore/label")
@admin_or_token
@document(query=[Param("id", "Label (= image) id.", required=True), TAG_PARAM], reply=json_reply("{}"),
          errors=(401, 404), admin=True)  # fmt: skip
def remove_label():
    """Remove one label of an image (admin)."""
    annotation_store().remove_label(check_image_id(checked.query_text("id")), check_tag(checked.query_text("tag")))
    return jsonify({})


@bp.get("/datastore/label")
@admin_or_token
@document(query=[Param("label", "Label (= image) id.", required=True), TAG_PARAM],
          reply={"description": "The label file (NIfTI)."}, errors=(401, 404), admin=True)  # fmt: skip
def download_label():
    """Download a stored label (admin: patient data)."""
    path = annotation_store().label_path(
        check_image_id(checked.query_text("label")), check_tag(checked.query_text("tag"))
    )
    return send_file(path, mimetype="application/octet-stream", as_attachment=True, download_name=path.name)


@bp.post("/activelearning/<strategy>")
@document(
    body={"content": {"application/json": {"schema": {"type": "object"}}}},
    reply=json_reply("The next unlabelled image ({} when none is left)."),
    errors=(400, 404),
)
def next_sample(strategy: str):
    """The next image to annotate: `random` or `first` of those without a final label."""
    client = checked.text(json_body(), "client_id", "") or None
    if strategy not in ("random", "first"):
        raise NotFound(f"Unknown strategy '{strategy[:40]}'; this server has: random, first.")
    return jsonify(annotation_store().next_sample(strategy, client))
