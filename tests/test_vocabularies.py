"""The StrEnum vocabularies keep the wire strings: replies, CLI choices and MONAI Label's types agree."""

from __future__ import annotations

import json

from flask import Flask, jsonify
from monailabel.interfaces.tasks.infer_v2 import InferType

from aiaa_core.engines import check_engine, resolve_engine
from aiaa_core.vocabularies import ENGINES, SERVABLE_TYPES, EngineName, ModelFormat, ModelType
from server.serve_command import ENGINE_CHOICES


def test_model_types_are_monai_labels_infer_types():
    assert {t.value for t in InferType} == {t.value for t in ModelType}
    assert all(ModelType(t.value) == t for t in InferType)  # the app's InferType and the server's compare equal


def test_members_serialise_as_their_plain_strings():
    info = {"type": ModelType.ANNOTATION, "engine": EngineName.ONNXRUNTIME, "source": ModelFormat.BUNDLE}
    plain = {"type": "annotation", "engine": "onnxruntime", "source": "bundle"}
    assert json.dumps(info) == json.dumps(plain)
    app = Flask(__name__)  # the server's replies use Flask's default JSON provider (jsonify)
    with app.app_context():
        assert jsonify(info).get_data() == jsonify(plain).get_data()
    assert f"{ModelType.DEEPGROW}" == "deepgrow" and str(EngineName.AUTO) == "auto"


def test_engine_names_are_spelled_once():
    assert ENGINE_CHOICES == ("auto", "torch", "torchscript", "onnxruntime")
    assert ENGINES == ("torch", "torchscript", "onnxruntime")
    assert check_engine(" ONNXRuntime ") is EngineName.ONNXRUNTIME
    assert resolve_engine("torchscript") == "torchscript"
    assert SERVABLE_TYPES == ("segmentation", "annotation", "deepgrow")
