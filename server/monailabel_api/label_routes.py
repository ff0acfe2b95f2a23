"""The AIAA side of the annotation loop: `PUT /v1/label` saves a clinician's label into the datastore.

AIAA clients (our Slicer extension's *Save label*) have the image in a session or on disk, not in the
datastore: the label comes with `?session_id=` (the session's image is stored) or with the image as the
`datapoint` part. The image's id is derived from its voxels and geometry (`content_id`, no file or
patient name), so saving again for the same image replaces its label; `?image=` names it explicitly.
Admin credentials required, like every label write.
"""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from .. import params as checked
from ..auth import admin_required
from ..blueprints import scheduler, session_store
from ..openapi import BINARY, PARAMS_FIELD, Param, document, form_body, json_reply
from ..scheduler import Work
from ..uploads import read_uploaded_image, request_ledger, request_params
from . import annotation_store
from .datastore import check_image_id, check_tag, content_id
from .datastore_routes import decode_part, stored_info

bp = Blueprint("aiaa_label", __name__)


@bp.put("/v1/label")
@admin_required
@document(
    query=[
        Param("session_id", "Store the image of this session (PUT /session/)."),
        Param("image", "Datastore id for the image (default: derived from its voxels and geometry)."),
        Param("tag", "Label tag (default 'final': what training reads)."),
    ],
    body=form_body(
        {
            "params": PARAMS_FIELD,
            "label": {**BINARY, "description": "The label map on the image's grid"},
            "datapoint": {**BINARY, "description": "The image, when no session_id is given"},
        },
        required=["label"],
    ),
    reply=json_reply("The datastore ids of the image and its label."),
    errors=(400, 401, 404, 413, 415, 440),
    admin=True,
)
def save_label():
    """Save a label (and its image) into the annotation datastore, where training reads it (admin)."""
    tag = check_tag(checked.query_text("tag"))
    image_id = checked.query_text("image")
    if image_id is not None:
        check_image_id(image_id)
    info = stored_info(request_params())
    session_id = checked.query_text("session_id")
    if session_id:
        image = session_store().get(session_id).image
    else:
        with scheduler().run(Work.DECODE):
            image = read_uploaded_image(current_app.config["SETTINGS"].max_image_voxels, request_ledger())
    label = decode_part("label")
    store = annotation_store()
    image_id = image_id or content_id(image)
    if not store.has_image(image_id):
        store.add_image(image_id, image, {"source": "aiaa"})
    label_id = store.save_label(image_id, label, tag, info)
    return jsonify({"image": image_id, "label": label_id, "tag": tag})
