"""MONAI Label's `/train/`: start (admin), progress (open, like MONAI Label's), stop (admin), and the
rollback of a version installed by training (admin)."""

from __future__ import annotations

from flask import Blueprint, jsonify

from .. import params as checked
from ..blueprints import registry
from ..errors import BadRequest, NotFound
from ..openapi import Param, document, json_reply
from . import PREFIX, annotation_store, training
from .auth_routes import admin_or_token
from .datastore_routes import json_body

bp = Blueprint("monailabel_train", __name__, url_prefix=PREFIX)
JSON_BODY = {"content": {"application/json": {"schema": {"type": "object"}}}}


@bp.get("/train/")
@document(
    query=[
        Param("check_if_running", "'true': 200 while a job runs, else 404.", {"type": "boolean"}),
        Param("all", "Accepted for MONAI Label's clients; the last job is the only one kept.", {"type": "boolean"}),
    ],
    reply=json_reply("The last training job: status, progress lines ('details'), result."),
    errors=(404,),
)
def train_status():
    """Progress of the training job (MONAI Label's AsyncTask status)."""
    check_if_running = checked.query_flag("check_if_running")
    checked.query_flag("all")
    status = training().status()
    if status is None or (check_if_running and status["status"] != "RUNNING"):
        raise NotFound("No training job is running." if check_if_running else "No training job has run yet.")
    return jsonify(status)


@bp.post("/train/")
@bp.post("/train/<model>")
@admin_or_token
@document(body=JSON_BODY, reply=json_reply("The started job."), errors=(400, 401, 404, 429), admin=True)
def train_start(model: str | None = None):
    """Fine-tune a segmentation model on the datastore's final labels, in a separate process (admin).

    Options (JSON body): max_epochs (1..100, default 2), time_limit_s (default 1800). The new weights are
    installed as a new version of the model only if the validation Dice did not drop."""
    body = json_body()
    if model is None:  # MONAI Label's "train every trainer": here the one trainable model, if only one
        trainers = list(training().trainers_info(registry()))
        if len(trainers) != 1:
            raise BadRequest(f"Name the model to train: POST /monailabel/train/<model>; trainable: {trainers}.")
        model = trainers[0]
    options = body.get(model) if isinstance(body.get(model), dict) else body
    return jsonify(training().start(registry(), annotation_store(), model, options))


@bp.delete("/train/")
@admin_or_token
@document(reply=json_reply("The stopped job's status."), errors=(401, 404), admin=True)
def train_stop():
    """Stop the running training job (admin); nothing is installed."""
    status = training().stop()
    if status is None:
        raise NotFound("No training job has run yet.")
    return jsonify(status)


@bp.delete("/train/<model>/version")
@admin_or_token
@document(reply=json_reply("The removed and the restored version."), errors=(401, 404, 429), admin=True)
def train_rollback(model: str):
    """Roll back: remove the version training installed, serving again the weights it replaced (admin)."""
    return jsonify(training().rollback(registry(), model))
