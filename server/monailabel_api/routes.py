"""MONAI Label's `/info/`, `/infer/{model}` and `/session/` for every model of the registry.

Inference goes the AIAA endpoints' way: the registry's task through `server.inference.run_model`, in the
scheduler's lane for the model's type, the decoded image and the model's grids charged to the request's
memory ledger first, the mask encoded on the input grid. Only the request's shape is MONAI Label's: the
image named by a datastore id (`?image=`), an upload in the `file` part or a session (`?session_id=`),
clicks as `foreground` / `background` lists, the reply a multipart of `params` and the mask.
Sessions are the AIAA sessions (one store): a session made through either API serves both.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from flask import Blueprint, current_app, jsonify, request

from aiaa_core.vocabularies import ModelType

from .. import params as checked
from ..blueprints import registry, scheduler, session_store
from ..blueprints import sessions as aiaa_sessions
from ..blueprints.inference import model_plan
from ..errors import BadRequest, NotFound, SessionExpired
from ..image_headers import ImageHeader
from ..image_reading import read_image, require_3d
from ..inference import run_model
from ..metrics import record_inference
from ..openapi import BINARY, PARAMS_FIELD, RESULT_REPLY, SESSION_INFO_REF, Param, document, form_body, json_reply
from ..replies import mask_reply, output_mode
from ..uploads import request_ledger, request_params, safe_name
from . import PREFIX, annotation_store
from .info import app_info

bp = Blueprint("monailabel", __name__, url_prefix=PREFIX)

MODEL_PATH = "Name of a served model (GET /monailabel/info/ lists them under 'models')."
INFER_FORM = form_body(
    {
        "params": {
            **PARAMS_FIELD,
            "description": "JSON: 'foreground' and 'background' [[i, j, k], ...] for deepgrow models, the six "
            "extreme points as 'points' (or 'foreground') for annotation models, 'label' (a name) optional",
        },
        "file": {**BINARY, "description": "The image, when it is neither in the datastore nor in a session"},
    },
    description="Multipart form: 'params' JSON and, without ?image= or ?session_id=, the image as 'file'.",
)
OUTPUTS = {"all": "multipart", "image": "image", "json": "json"}  # MONAI Label's names → the AIAA replies'


@bp.get("/info/")
@document(reply=json_reply("MONAI Label's app info: every served model, trainers, strategies, datastore."))
def info():
    """The app info MONAI Label's clients read first (open, like /v1/models)."""
    return jsonify(app_info(current_app))


# --------------------------------------------------------------------------------------------- infer


def task_inputs(model_type: str, params: dict, size) -> dict:
    """The task's inputs from MONAI Label's params, checked (bounded point lists inside the image)."""
    if model_type == ModelType.DEEPGROW:
        return {
            "foreground": checked.points(params, "foreground", size, min_count=1),
            "background": checked.points(params, "background", size),
        }
    if model_type == ModelType.ANNOTATION:  # MONAI Label's clients send the extreme points as clicks
        key = "points" if params.get("points") else "foreground"
        return {"points": checked.points(params, key, size, min_count=6)}
    return {}


def requested_label(params: dict) -> str | None:
    """MONAI Label's `label` (the structure a DeepEdit-style click is for), a bounded name; it names the mask."""
    value = params.get("label")
    if value is None or value == "":
        return None
    return checked.text(params, "label", "")


@bp.post("/infer/<model>")
@document(
    query=[
        Param("image", "Id of a datastore image (GET /monailabel/datastore/?output=all)."),
        Param("session_id", "Use the image of this session (PUT /monailabel/session/)."),
        Param("output", "all (default: multipart), image or json.", {"type": "string", "enum": list(OUTPUTS)}),
    ],
    body=INFER_FORM,
    reply=RESULT_REPLY,
    errors=(400, 404, 413, 415, 440, 503),
)
def infer(model: str):
    """Run a served model (app model, MMAR or bundle) on a datastore image, a session or an upload."""
    served = registry().get(model)
    output = OUTPUTS[checked.query_text("output", "all", choices=list(OUTPUTS))]
    output_mode(output)
    params = request_params()
    label = requested_label(params)
    if "label" in request.files:
        raise BadRequest("This server's models take no label input (scribbles); send the image and clicks only.")
    session_id = checked.query_text("session_id")
    image_id = checked.query_text("image")
    session = session_store().get(session_id) if session_id else None
    upload = request.files.get("file")
    if session is None and upload is None and not image_id:
        raise BadRequest("No image: give ?image=<datastore id>, ?session_id=<session>, or the image as 'file'.")
    if session is None and upload is None:
        stored = annotation_store().image_path(image_id)  # 404 before any queueing
    device = current_app.config["SETTINGS"].device
    with scheduler().run(served.type) as slot, tempfile.TemporaryDirectory(prefix="aiaa-ml-") as tmp:
        ledger = request_ledger(plan=model_plan(served), batch=slot.batch)
        max_voxels = current_app.config["SETTINGS"].max_image_voxels
        if session is not None:
            image = session.image
            ledger.charge_image(ImageHeader.of(image), decoded=True)
        elif upload is not None:
            path = Path(tmp) / safe_name(upload.filename or "image.nii.gz")
            upload.save(path)
            image = read_image([path], max_voxels=max_voxels, ledger=ledger)
        else:
            image = read_image([stored], max_voxels=max_voxels, ledger=ledger)
        if served.task.dimension == 3:
            require_3d(image, served.name)
        inputs = task_inputs(served.type, params, image.GetSize())
        mask, result = run_model(served, image, inputs, device=device, session=session, pacing=slot.pacing)
        result["latencies"]["queue"] = round(slot.queued_s, 4)
        if label and mask.any():
            result["label_names"] = {label: 1} if len(result["label_names"]) <= 1 else result["label_names"]
        reply = mask_reply(mask, image, result, {}, output)
    record_inference(served.name, result["latencies"])
    return reply


# ------------------------------------------------------------------------------------------- sessions


@bp.put("/session/")
@document(
    query=[Param("expiry", "Seconds it lives after its last use (0: default).", {"type": "number", "minimum": 0})],
    body=form_body({"files": {**BINARY, "description": "The image file(s): one volume or a DICOM series"}}),
    reply=json_reply("The new session (shared with the AIAA API).", {"type": "object"}),
    errors=(400, 413, 415, 503),
)
def create_session():
    """MONAI Label's session: the upload (`files` parts) decoded once and kept for later clicks. The AIAA
    `PUT /session/` itself (it takes the `files` part too): the same store, checks and reply keys."""
    return aiaa_sessions.create_session()


@bp.get("/session/<session_id>")
@document(
    query=[Param("update_ts", "'true' to count this as a use.", {"type": "boolean"})],
    reply=json_reply("The session's information.", SESSION_INFO_REF),
    errors=(404,),
)
def get_session(session_id: str):
    """The session's information while it lives (404 once unknown or expired): the AIAA view itself."""
    return aiaa_sessions.get_session(session_id)


@bp.delete("/session/<session_id>")
@document(reply=json_reply("The removed session's information."), errors=(404,))
def delete_session(session_id: str):
    """Remove the session (404 when unknown, as MONAI Label answers)."""
    try:
        described = session_store().get(session_id, touch=False).info()
    except SessionExpired as exc:
        raise NotFound(exc.message) from None
    session_store().delete(session_id)
    return jsonify(described)
