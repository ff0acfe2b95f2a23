"""The model repository's admin API: `PUT`, `GET`, `PATCH`, `DELETE /admin/model/<name>` (credentials needed)."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request

from ..archives import parse_config, prepare_model
from ..auth import admin_required
from ..errors import BadRequest
from ..image_names import upload_basename
from ..openapi import BINARY, MODEL_REF, document, form_body, json_reply
from ..registry import check_name
from ..uploads import safe_name
from . import registry, scheduler

bp = Blueprint("admin", __name__, url_prefix="/admin")

UPLOAD_FORM = form_body(
    {
        "data": {**BINARY, "description": "MMAR or MONAI bundle archive (.zip, .tar, .tar.gz, .gz), or with "
                 "'config' a model file (.ts TorchScript, .pt checkpoint, .onnx)"},
        "config": {**BINARY, "description": "config_aiaa.json, when 'data' is a single model file"},
    },
    required=["data"],
)  # fmt: skip
CONFIG_BODY = {
    "required": True,
    "description": "The new config (config_aiaa.json, or a bundle's inference config) as JSON.",
    "content": {"application/json": {"schema": {"type": "object"}}},
}
MODEL_REPLY = json_reply("The model object, as GET /v1/models shows it.", MODEL_REF)


def config_part() -> bytes | None:
    """The `config` part: a file (`-F config=@config_aiaa.json`) or a form field (`-F config=<...`)."""
    if "config" in request.files:
        return request.files["config"].read()
    if "config" in request.form:
        return request.form["config"].encode("utf-8")
    return None


@bp.put("/model/<name>")
@document(body=UPLOAD_FORM, reply=MODEL_REPLY, errors=(400, 413))
@admin_required
def put_model(name: str):
    """Install (or replace) a model from an MMAR/bundle archive, or from a config plus one model file."""
    check_name(name)
    data = request.files.get("data")
    if data is None:
        raise BadRequest(
            "No model in the request: attach it as the 'data' file part (-F data=@model.zip), "
            "with -F config=@config_aiaa.json when 'data' is a single .ts, .pt or .onnx file."
        )
    data_name = upload_basename(data.filename or "") or "data"
    config = config_part()
    with registry().staging() as work:
        upload = work / "upload" / safe_name(data_name)
        upload.parent.mkdir()
        data.save(upload)
        folder = prepare_model(upload, data_name, config, work, current_app.config["SETTINGS"].archive_limits)
        # The install's test inference pauses while clicks are running, as batch inference does.
        model = registry().install(name, folder.path, folder.format, pacing=scheduler().batch_pacing)
    return jsonify(model.info())


@bp.get("/model/<name>")
@document(reply=json_reply("The stored config."), errors=(400, 404))
@admin_required
def get_model_config(name: str):
    """The config the model was installed with."""
    return jsonify(registry().stored_config(check_name(name)))


@bp.patch("/model/<name>")
@document(body=CONFIG_BODY, reply=MODEL_REPLY, errors=(400, 404))
@admin_required
def patch_model_config(name: str):
    """Reload the model with a new config (JSON body, or a `config` part); a bad one leaves the old serving."""
    check_name(name)
    raw = config_part() if request.files or request.form else request.get_data()
    if not raw:
        raise BadRequest("Send the new config as the JSON request body (or as a 'config' part).")
    model = registry().reconfigure(name, parse_config(raw, "new config"), pacing=scheduler().batch_pacing)
    return jsonify(model.info())


@bp.delete("/model/<name>")
@document(reply=json_reply("The model is no longer served."), errors=(400, 404))
@admin_required
def delete_model(name: str):
    """Stop serving the model and remove it from the repository (requests already running finish)."""
    registry().delete(check_name(name))
    return jsonify({"success": True, "deleted": name})
