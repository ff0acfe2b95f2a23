"""The OpenAPI 3 document, generated at request time from the app's url map.

Every rule of `app.url_map` becomes a path (a route added by any blueprint appears without further
work); methods and path parameters come from the rule, summary and description from the view's
docstring, and query parameters, request body and replies from `@document(...)` next to the view.
The pieces many views share (the `model` parameter, the inference form, the result multipart) are
defined once here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus

from flask import Flask
from werkzeug.routing import Rule

from . import __version__
from .auth import admin_required

OPENAPI_VERSION = "3.0.3"
ERROR_REF = {"$ref": "#/components/schemas/Error"}
_ADMIN_CHECK = admin_required(lambda: None).__code__  # the wrapper every @admin_required view runs
_RULE_ARGUMENT = re.compile(r"<(?:(?P<converter>\w+)(?:\([^)]*\))?:)?(?P<name>\w+)>")
_CONVERTER_SCHEMAS = {"int": {"type": "integer"}, "float": {"type": "number"}, "uuid": {"type": "string"}}


@dataclass(frozen=True)
class Param:
    """A query parameter."""

    name: str
    description: str
    schema: dict = field(default_factory=lambda: {"type": "string"})
    required: bool = False

    def to_openapi(self) -> dict:
        return {
            "name": self.name,
            "in": "query",
            "description": self.description,
            "required": self.required,
            "schema": self.schema,
        }


@dataclass(frozen=True)
class Doc:
    """What a view declares about itself beyond its rule and docstring."""

    query: Sequence[Param] = ()
    body: dict | None = None  # an OpenAPI requestBody object
    reply: dict | None = None  # the 200 response object
    errors: Sequence[int] = ()
    admin: bool = False


def document(
    *,
    query: Sequence[Param] = (),
    body: dict | None = None,
    reply: dict | None = None,
    errors: Sequence[int] = (),
    admin: bool = False,
) -> Callable[[Callable], Callable]:
    """Attach the view's parameters and replies for the generated OpenAPI document."""

    def attach(view: Callable) -> Callable:
        view.openapi = Doc(tuple(query), body, reply, tuple(errors), admin)
        return view

    return attach


def json_reply(description: str, schema: dict | None = None) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema or {"type": "object"}}}}


def text_reply(description: str, media_type: str = "text/plain") -> dict:
    return {"description": description, "content": {media_type: {"schema": {"type": "string"}}}}


def form_body(fields: dict[str, dict], required: Sequence[str] = (), description: str = "") -> dict:
    """A multipart form; an object field (the `params` JSON) is a part encoded as JSON."""
    media: dict = {
        "schema": {"type": "object", "properties": fields, **({"required": list(required)} if required else {})}
    }
    if json_fields := [name for name, schema in fields.items() if schema.get("type") == "object"]:
        media["encoding"] = {name: {"contentType": "application/json"} for name in json_fields}
    body = {"required": bool(required), "content": {"multipart/form-data": media}}
    if description:
        body["description"] = description
    return body


BINARY = {"type": "string", "format": "binary"}
PARAMS_FIELD = {"type": "object", "description": "JSON object with the operation's parameters", "example": {}}

# --- pieces several views share ---------------------------------------------------------------------

MODEL = Param("model", "Name of a served model (GET /v1/models lists them).", required=True)
SESSION_ID = Param("session_id", "Use the image of this session (PUT /session/) instead of an upload.")
OUTPUT = Param(
    "output",
    "Reply shape: leave out for the multipart (params + mask), 'image' for the bare mask file, "
    "'json' for the params only.",
    {"type": "string", "enum": ["image", "json"]},
)
IMAGE_FORM = form_body(
    {
        "params": PARAMS_FIELD,
        "datapoint": {**BINARY, "description": "The image (.nii, .nii.gz, .nrrd, .mha, DICOM .zip, .png/.jpg)"},
        "image": {**BINARY, "description": "Same as 'datapoint' (the name the C++ client and OHIF use)"},
    },
    description="Multipart form: 'params' JSON and the image file, unless session_id is given.",
)
SESSION_FORM = form_body(
    {
        "image": {**BINARY, "description": "The volume (or a .zip of a DICOM series with uncompress=true)"},
        "image0": {**BINARY, "description": "First file of a DICOM series sent as image0..imageN"},
    },
    description="Multipart form with the image file(s).",
)
RESULT_REPLY = {
    "description": "multipart/form-data: a 'params' part (result JSON) then the mask file; "
    "with output=image the bare file, with output=json the JSON only.",
    "content": {
        "multipart/form-data": {
            "schema": {"type": "object", "properties": {"params": {"type": "object"}, "image": BINARY}}
        },
        "application/octet-stream": {"schema": BINARY},
        "application/json": {"schema": {"type": "object"}},
    },
}
INFERENCE_DOC = document(  # the four inference endpoints
    query=[MODEL, SESSION_ID, OUTPUT], body=IMAGE_FORM, reply=RESULT_REPLY, errors=(400, 404, 413, 415, 440, 503)
)
MODEL_REF = {"$ref": "#/components/schemas/Model"}
SESSION_INFO_REF = {"$ref": "#/components/schemas/SessionInfo"}

COMPONENTS = {
    "schemas": {
        "Error": {
            "type": "object",
            "required": ["error", "success"],
            "properties": {
                "error": {
                    "type": "object",
                    "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
                },
                "success": {"type": "boolean", "enum": [False]},
            },
        },
        "Model": {
            "type": "object",
            "required": ["name", "type", "labels", "description", "version"],
            "properties": {
                "name": {"type": "string"},
                "type": {
                    "type": "string",
                    "enum": ["segmentation", "annotation", "deepgrow", "classification", "others", "pipeline"],
                },
                "labels": {"type": "array", "items": {"type": "string"}},
                "description": {"type": "string"},
                "version": {"type": "string"},
                "deepgrow": {"type": "string", "enum": ["2D", "3D"]},
                "padding": {"type": "number"},
                "roi": {"type": "array", "items": {"type": "integer"}},
                "sigma": {"type": "number"},
                "engine": {"type": "string"},
                "status": {"type": "string", "enum": ["ready", "loading", "failed"]},
                "source": {"type": "string"},
            },
            "additionalProperties": True,
        },
        "SessionInfo": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "size": {"type": "array", "items": {"type": "integer"}},
                "spacing": {"type": "array", "items": {"type": "number"}},
                "origin": {"type": "array", "items": {"type": "number"}},
                "direction": {"type": "array", "items": {"type": "number"}},
                "bytes": {"type": "integer"},
                "expiry": {"type": "number"},
                "create_ts": {"type": "number"},
                "last_access_ts": {"type": "number"},
            },
        },
    },
    "securitySchemes": {"basic": {"type": "http", "scheme": "basic"}, "bearer": {"type": "http", "scheme": "bearer"}},
}


def openapi_path(rule: Rule) -> tuple[str, list[dict]]:
    """`/session/<session_id>` → `/session/{session_id}` and its path parameters."""
    params = []
    for match in _RULE_ARGUMENT.finditer(rule.rule):
        params.append(
            {
                "name": match["name"],
                "in": "path",
                "required": True,
                "schema": _CONVERTER_SCHEMAS.get(match["converter"] or "", {"type": "string"}),
            }
        )
    return _RULE_ARGUMENT.sub(lambda m: "{" + m["name"] + "}", rule.rule), params


def operation(rule: Rule, method: str, view: Callable, operation_id: str, served: Sequence[str] = ()) -> dict:
    """One operation; `served` (the model names) becomes the enum of a required `model` parameter, so
    that the document says what this server runs and a fuzzer reaches past the model lookup."""
    doc: Doc = getattr(view, "openapi", None) or Doc()
    lines = (view.__doc__ or "").strip().splitlines()
    summary = lines[0].strip() if lines else rule.endpoint.split(".")[-1].replace("_", " ")
    op = {
        "operationId": operation_id,
        "tags": [rule.endpoint.split(".")[0] if "." in rule.endpoint else "server"],
        "summary": summary,
        "parameters": openapi_path(rule)[1] + [with_served_models(p.to_openapi(), served) for p in doc.query],
        "responses": {"200": doc.reply or json_reply("OK")},
    }
    if len(lines) > 1:
        op["description"] = " ".join(line.strip() for line in lines[1:]).strip()
    if doc.body and method in ("POST", "PUT", "PATCH"):
        op["requestBody"] = doc.body
    errors = set(doc.errors)
    if doc.admin or getattr(view, "__code__", None) is _ADMIN_CHECK:
        op["security"] = [{"basic": []}, {"bearer": []}]
        errors |= {401, 403}
    for status in sorted(errors):
        op["responses"][str(status)] = error_reply(status_phrase(status))
    op["responses"]["default"] = error_reply("Error")
    return op


def with_served_models(param: dict, served: Sequence[str]) -> dict:
    if param["name"] == MODEL.name and param["required"] and served:
        return {**param, "schema": {**param["schema"], "enum": sorted(served)}}
    return param


def error_reply(description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": ERROR_REF}}}


def status_phrase(status: int) -> str:
    if status == 440:
        return "Session expired or unknown"
    return HTTPStatus(status).phrase


def build_spec(app: Flask, server_url: str = "/") -> dict:
    """The OpenAPI document of every route of `app` (static files aside)."""
    paths: dict[str, dict] = {}
    taken: set[str] = set()
    registry = app.extensions.get("aiaa.registry")
    served = [model.name for model in registry.list()] if registry is not None else []
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: (r.rule, r.endpoint)):
        if rule.endpoint == "static":
            continue
        view = app.view_functions[rule.endpoint]
        path, _ = openapi_path(rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            operation_id = f"{method.lower()}_{rule.endpoint.replace('.', '_')}"
            while operation_id in taken:  # one view under two rules (/logs and /logs/)
                operation_id += "_"
            taken.add(operation_id)
            paths.setdefault(path, {})[method.lower()] = operation(rule, method, view, operation_id, served)
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "AIAA-compatible annotation server",
            "version": __version__,
            "description": "The NVIDIA Clara AIAA REST API served on MONAI and MONAI Label, plus its extensions.",
        },
        "servers": [{"url": server_url or "/"}],
        "paths": paths,
        "components": COMPONENTS,
    }
