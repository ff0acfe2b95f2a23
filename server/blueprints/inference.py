"""Model listing and inference: `/v1/models`, `/v1/segmentation`, `/v1/dextr3d`, `/v1/deepgrow`, `/v1/inference`."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify

from aiaa_core.vocabularies import ModelType

from .. import params as checked
from ..budget import pipeline_bytes
from ..errors import BadRequest
from ..image_headers import ImageHeader
from ..image_reading import require_3d
from ..mask_writing import writer_options
from ..metrics import record_inference
from ..openapi import INFERENCE_DOC, MODEL_REF, Param, document, json_reply
from ..registry import ServedModel
from ..replies import mask_reply, output_mode
from ..uploads import request_image, request_ledger, request_params
from . import registry, scheduler, session_store

bp = Blueprint("inference", __name__)


def backend():
    """Where the model runs: in this process, or on Ray Serve (`server.backends`)."""
    return current_app.extensions["aiaa.backend"]


def label_matches(labels: list[str], query: str) -> bool:
    """AIAA's label filter: case-insensitive, equal to, contained in, or containing the query."""
    query = query.lower()
    return any(query in label.lower() or label.lower() in query for label in labels)


@bp.get("/v1/models")
@document(
    query=[
        Param("model", "Return only this model, as one object (404 if unknown)."),
        Param("label", "Only models with a label equal to, containing or contained in this (case-insensitive)."),
        Param("type", "Only models of this type (segmentation, annotation, deepgrow, ...)."),
    ],
    reply=json_reply("The served models (one object with ?model=).", {"type": "array", "items": MODEL_REF}),
    errors=(404,),
)
def list_models():
    """The served models (AIAA model objects)."""
    name = checked.query_text("model")
    if name is not None:
        return jsonify(registry().get(name).info())
    models = [m.info() for m in registry().list()]
    if label := checked.query_text("label"):
        models = [m for m in models if label_matches(m["labels"], label)]
    if model_type := checked.query_text("type"):
        models = [m for m in models if m["type"] == model_type]
    return jsonify(models)


def extreme_point_inputs(params: dict, image) -> dict:
    return {"points": checked.points(params, "points", image.GetSize(), min_count=6)}


def click_inputs(params: dict, image) -> dict:
    return {
        "foreground": checked.points(params, "foreground", image.GetSize(), min_count=1),
        "background": checked.points(params, "background", image.GetSize()),
    }


# model type → the task's validated inputs from the request's params
TASK_INPUTS = {
    ModelType.SEGMENTATION: lambda params, image: {},
    ModelType.ANNOTATION: extreme_point_inputs,
    ModelType.DEEPGROW: click_inputs,
}


def infer(op: str, model_type: str | None = None):
    """What every inference endpoint does: model, params, image (upload or session), the task, the reply.

    `model_type` is the type the endpoint serves; None (`/v1/inference`) dispatches on the model's own type.
    Everything the client sent is checked before any work; the upload is decoded inside the lane's slot and
    both its decoded size and the model's pipeline are charged to the request's memory ledger first.
    """
    model = registry().get(checked.query_text("model"))
    if model_type is not None and model.type != model_type:
        raise BadRequest(f"Model '{model.name}' is a {model.type} model; /v1/{op} needs a {model_type} model.")
    if model.type not in TASK_INPUTS:
        raise BadRequest(f"Model '{model.name}' has type '{model.type}', which /v1/{op} cannot run.")
    params = request_params()
    writer = writer_options(params)
    output = output_mode(checked.query_text("output"))
    session_id = checked.query_text("session_id")
    session = session_store().get(session_id) if session_id else None
    device = current_app.config["SETTINGS"].device
    with scheduler().run(model.type) as slot:
        ledger = request_ledger(plan=model_plan(model), batch=slot.batch)
        if session:
            image = session.image
            ledger.charge_image(ImageHeader.of(image), decoded=True)
        else:
            image = request_image(ledger)  # refused from its header when it or the model's grids would not fit
        if model.task.dimension == 3:
            require_3d(image, model.name)
        inputs = TASK_INPUTS[model.type](params, image)
        mask, result = backend().run(model, image, inputs, device=device, session=session, pacing=slot.pacing)
        result["latencies"]["queue"] = round(slot.queued_s, 4)
        reply = mask_reply(mask, image, result, writer, output)
    record_inference(model.name, result["latencies"])
    return reply


def model_plan(model: ServedModel):
    """What the model's pipeline will allocate for an image header (`server.budget.pipeline_bytes`)."""
    channels = max(2, len(model.labels) + 1)

    def plan(header: ImageHeader) -> tuple[int, str]:
        nbytes, what = pipeline_bytes(model.task, header, channels)
        return nbytes, f"{what} of model '{model.name}'"

    return plan


@bp.post("/v1/segmentation")
@INFERENCE_DOC
def segmentation():
    """Automatic segmentation of the whole volume (params {})."""
    return infer("segmentation", ModelType.SEGMENTATION)


@bp.post("/v1/dextr3d")
@INFERENCE_DOC
def dextr3d():
    """Annotation from at least 6 extreme points (params {"points": [[x, y, z], ...]})."""
    return infer("dextr3d", ModelType.ANNOTATION)


@bp.post("/v1/deepgrow")
@INFERENCE_DOC
def deepgrow():
    """Interactive segmentation from clicks (params "foreground", "background", "current_point")."""
    return infer("deepgrow", ModelType.DEEPGROW)


@bp.post("/v1/inference")
@INFERENCE_DOC
def inference():
    """Generic inference: dispatches on the model's type (segmentation, annotation or deepgrow params)."""
    return infer("inference")
