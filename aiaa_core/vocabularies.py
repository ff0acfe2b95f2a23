"""The vocabularies of the server and the app as StrEnums: model types, engines and model formats.

One place for each list of names, importable without Flask or torch (the CLI's argparse choices, the app,
the benches). StrEnum members are their strings: JSON replies, markers on disk and comparisons with
plain strings are unchanged.
"""

from __future__ import annotations

from enum import StrEnum


class ModelType(StrEnum):
    """What a model does with a request (`type` in /v1/models); the values of MONAI Label's `InferType`."""

    SEGMENTATION = "segmentation"
    ANNOTATION = "annotation"  # extreme points (DEXTR3D)
    DEEPGROW = "deepgrow"  # foreground/background clicks
    DEEPEDIT = "deepedit"
    CLASSIFICATION = "classification"
    DETECTION = "detection"
    SCRIBBLES = "scribbles"
    OTHERS = "others"


SERVABLE_TYPES = (ModelType.SEGMENTATION, ModelType.ANNOTATION, ModelType.DEEPGROW)  # what the AIAA API serves


class EngineName(StrEnum):
    """What runs a network (`aiaa serve --engine`, `engine` in /v1/models); AUTO picks the fastest here."""

    AUTO = "auto"
    TORCH = "torch"
    TORCHSCRIPT = "torchscript"
    ONNXRUNTIME = "onnxruntime"


ENGINES = (EngineName.TORCH, EngineName.TORCHSCRIPT, EngineName.ONNXRUNTIME)  # the concrete ones, not AUTO


class ModelFormat(StrEnum):
    """Where a served model comes from (`source` in /v1/models, `format` in the store's markers)."""

    APP = "app"  # the MONAI Label app's own task
    MMAR = "mmar"  # a Clara MMAR (config_inference.json)
    BUNDLE = "bundle"  # a MONAI bundle (configs/inference.json)


UPLOAD_FORMATS = (ModelFormat.MMAR, ModelFormat.BUNDLE)  # what can be uploaded or exported
