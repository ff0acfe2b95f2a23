"""The OpenAPI document: valid OpenAPI 3 (openapi-spec-validator), generated from the url map, so every
route of the app, including any added later by another blueprint, is in it with its methods and parameters."""

from __future__ import annotations

import copy

import pytest
from openapi_spec_validator import validate_spec

from server.app import create_app
from server.auth import AdminCredentials
from server.registry import ModelRegistry
from server.settings import Settings

IGNORED_METHODS = {"HEAD", "OPTIONS"}


def make_app(tmp):
    settings = Settings(
        model_repo=tmp / "repo",
        log_dir=tmp / "logs",
        session_dir=tmp / "sessions",
        admin_credentials=AdminCredentials("admin", "openapi-test"),
    )
    return create_app(settings, registry=ModelRegistry(tmp / "repo", []))  # routes do not depend on the models


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    return make_app(tmp_path_factory.mktemp("openapi"))


@pytest.fixture(scope="module")
def spec(app) -> dict:
    reply = app.test_client().get("/openapi.json")
    assert reply.status_code == 200 and reply.is_json
    return reply.get_json()


def openapi_path(rule: str) -> str:
    """Flask's `/session/<session_id>` or `/x/<int:n>` written the OpenAPI way."""
    parts = []
    for piece in rule.split("/"):
        if piece.startswith("<") and piece.endswith(">"):
            piece = "{" + piece[1:-1].split(":")[-1] + "}"
        parts.append(piece)
    return "/".join(parts)


def valid(spec: dict) -> bool:
    validate_spec(copy.deepcopy(spec))  # raises on any error; it also annotates the document it is given
    return True


def test_document_is_valid_openapi_3(spec):
    assert valid(spec)
    assert spec["openapi"].startswith("3.")


def test_every_rule_of_the_url_map_is_documented(app, spec):
    rules = [rule for rule in app.url_map.iter_rules() if rule.endpoint != "static"]
    assert len(rules) >= 15
    for rule in rules:
        item = spec["paths"].get(openapi_path(rule.rule))
        assert item is not None, f"{rule.rule} is missing from /openapi.json"
        for method in rule.methods - IGNORED_METHODS:
            assert method.lower() in item, f"{method} {rule.rule} is missing from /openapi.json"
    documented = {(path, method) for path, item in spec["paths"].items() for method in item}
    in_map = {(openapi_path(r.rule), m.lower()) for r in rules for m in r.methods - IGNORED_METHODS}
    assert documented == in_map  # and nothing that the server does not serve


def test_a_route_added_by_any_blueprint_appears_without_further_work(tmp_path):
    app = make_app(tmp_path)

    def frobnicate(count: int):
        """Frobnicate the counter.

        A route no one described for OpenAPI: its docstring and rule are enough."""
        return {"count": count}

    app.add_url_rule("/v1/frobnicate/<int:count>", "frobnicate", frobnicate, methods=["POST"])
    spec = app.test_client().get("/openapi.json").get_json()
    assert valid(spec)
    operation = spec["paths"]["/v1/frobnicate/{count}"]["post"]
    assert operation["summary"] == "Frobnicate the counter."
    assert "its docstring and rule are enough" in operation["description"]
    assert operation["parameters"] == [{"name": "count", "in": "path", "required": True, "schema": {"type": "integer"}}]


def test_views_carry_their_parameters_bodies_and_replies(spec):
    segmentation = spec["paths"]["/v1/segmentation"]["post"]
    params = {p["name"]: p for p in segmentation["parameters"]}
    assert params["model"]["required"] is True and params["model"]["in"] == "query"
    assert {"session_id", "output"} <= set(params)
    form = segmentation["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert form["datapoint"]["format"] == "binary" and "params" in form
    assert "multipart/form-data" in segmentation["responses"]["200"]["content"]
    assert {"400", "404", "440"} <= set(segmentation["responses"])
    assert segmentation["responses"]["404"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }

    session = spec["paths"]["/session/{session_id}"]
    assert [p["name"] for p in session["get"]["parameters"] if p["in"] == "path"] == ["session_id"]
    assert "delete" in session and "put" in spec["paths"]["/session/"]
    logs = {p["name"]: p for p in spec["paths"]["/logs"]["get"]["parameters"]}
    assert set(logs) == {"lines", "html"} and logs["lines"]["schema"]["maximum"] == 10_000
    assert spec["paths"]["/logs"]["get"]["security"] == [{"basic": []}, {"bearer": []}]  # admin only
    models = spec["paths"]["/v1/models"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert models["items"] == {"$ref": "#/components/schemas/Model"}


def test_admin_protected_views_say_so(app, spec):
    dashboard = spec["paths"]["/v1/dashboard"]["get"]
    assert dashboard["security"] == [{"basic": []}, {"bearer": []}] and "401" in dashboard["responses"]
    assert "security" not in spec["paths"]["/v1/models"]["get"]
    for path, item in spec["paths"].items():  # the admin API (its routes come from another blueprint)
        if path.startswith("/admin/"):
            assert all("security" in operation for operation in item.values()), path


def test_servers_url_follows_the_path_prefix(app):
    reply = app.test_client().get("/openapi.json", headers={"X-Forwarded-Prefix": "/aiaa"})
    assert reply.get_json()["servers"] == [{"url": "/aiaa"}]


def test_docs_page_uses_the_local_swagger_ui(app):
    client = app.test_client()
    page = client.get("/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert "://" not in page.get_data(as_text=True)  # nothing from a CDN
    for asset in ("vendor/swagger-ui/swagger-ui-bundle.js", "vendor/swagger-ui/swagger-ui.css"):
        assert f"/static/{asset}" in page.get_data(as_text=True)
        reply = client.get(f"/static/{asset}")
        assert reply.status_code == 200 and len(reply.data) > 100_000
        reply.close()


class ServedModel:
    task = None  # nothing to warm up

    def __init__(self, name: str):
        self.name = name


def test_required_model_parameter_lists_the_served_models(tmp_path):
    settings = Settings(model_repo=tmp_path / "repo", log_dir=tmp_path / "logs", session_dir=tmp_path / "s")
    registry = ModelRegistry(tmp_path / "repo", [ServedModel("spleen_b"), ServedModel("spleen_a")])
    spec = create_app(settings, registry=registry).test_client().get("/openapi.json").get_json()
    assert valid(spec)
    inference = {p["name"]: p for p in spec["paths"]["/v1/deepgrow"]["post"]["parameters"]}
    assert inference["model"]["schema"] == {"type": "string", "enum": ["spleen_a", "spleen_b"]}
    lookup = {p["name"]: p for p in spec["paths"]["/v1/models"]["get"]["parameters"]}
    assert "enum" not in lookup["model"]["schema"]  # optional there: an unknown name is a documented 404
