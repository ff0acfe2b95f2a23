"""Model listing and inference: `/v1/models`, `/v1/segmentation`."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from ..errors import BadRequest, SessionExpired
from ..imageio import require_3d
from ..inference import run_model
from ..registry import ModelRegistry
from ..replies import mask_reply
from ..uploads import read_uploaded_image, request_params

bp = Blueprint("inference", __name__)


def registry() -> ModelRegistry:
    return current_app.extensions["aiaa.registry"]


def label_matches(labels: list[str], query: str) -> bool:
    """AIAA's label filter: case-insensitive, equal to, contained in, or containing the query."""
    query = query.lower()
    return any(query in label.lower() or label.lower() in query for label in labels)


@bp.get("/v1/models")
def list_models():
    name = request.args.get("model")
    if name is not None:
        return jsonify(registry().get(name).info())
    models = [m.info() for m in registry().list()]
    if label := request.args.get("label"):
        models = [m for m in models if label_matches(m["labels"], label)]
    if model_type := request.args.get("type"):
        models = [m for m in models if m["type"] == model_type]
    return jsonify(models)


@bp.post("/v1/segmentation")
def segmentation():
    model = registry().get(request.args.get("model"))
    if model.type != "segmentation":
        raise BadRequest(
            f"Model '{model.name}' is a {model.type} model; /v1/segmentation needs a segmentation model."
        )
    if request.args.get("session_id"):
        raise SessionExpired(f"Session '{request.args['session_id']}' is unknown or expired; upload the image again.")
    params = request_params(request)
    image = read_uploaded_image(request, current_app.config["SETTINGS"].max_image_voxels)
    if model.task.dimension == 3:
        require_3d(image, model.name)
    mask, result = run_model(model, image, params, device=current_app.config["SETTINGS"].device)
    return mask_reply(mask, image, result, params, request.args.get("output"))
