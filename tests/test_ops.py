"""Operations endpoints: /health and /logs (admin only; text and self-refreshing HTML) against a live server;
/ready."""

from __future__ import annotations

import base64

import pytest
import requests
from conftest import generated_admin

ADMIN = ("ops", "ready-test-password")


@pytest.fixture(scope="module")
def admin(live_server) -> tuple[str, str]:
    return generated_admin(live_server)


def test_health(live_server):
    reply = requests.get(f"{live_server.url}/health", timeout=10)
    assert reply.status_code == 200 and reply.json()["status"] == "ok"


def test_logs_lines_and_structured_request_lines(live_server, admin):
    requests.get(f"{live_server.url}/v1/models", params={"model": "segmentation_spleen"}, timeout=10)
    for path in ("/logs", "/logs/"):
        reply = requests.get(f"{live_server.url}{path}", params={"lines": 3}, auth=admin, timeout=10)
        assert reply.status_code == 200 and reply.headers["Content-Type"].startswith("text/plain")
        assert len(reply.text.splitlines()) == 3
    text = requests.get(f"{live_server.url}/logs", auth=admin, timeout=10).text
    assert "method=GET path=/v1/models model=segmentation_spleen session=- status=200" in text


def test_client_values_cannot_forge_log_lines(live_server, admin):
    forged = "x\n2026-01-01 00:00:00,000 INFO aiaa.requests: method=DELETE path=/forged"
    reply = requests.get(f"{live_server.url}/v1/models", params={"model": forged, "session_id": "y" * 5000}, timeout=10)
    assert reply.status_code == 404
    text = requests.get(f"{live_server.url}/logs", params={"lines": 20}, auth=admin, timeout=10).text
    assert not any(line.startswith("2026-01-01") for line in text.splitlines())
    (line,) = [line for line in text.splitlines() if "path=/v1/models model=x\\n2026-01-01" in line]
    assert " session=sid-" in line and "yyyy" not in line  # a tag, never the value


def test_logs_html_refreshes_itself_and_escapes(live_server, admin):
    reply = requests.get(f"{live_server.url}/logs", params={"html": "true", "lines": 5}, auth=admin, timeout=10)
    assert reply.headers["Content-Type"].startswith("text/html")
    assert 'http-equiv="refresh"' in reply.text and "<pre>" in reply.text


@pytest.mark.parametrize("lines", ["many", "1e20", "0", "-1", "10001", "99999999999999999999", "9" * 5000, "2.5"])
def test_logs_bad_lines(live_server, admin, lines):
    reply = requests.get(f"{live_server.url}/logs", params={"lines": lines}, auth=admin, timeout=10)
    assert reply.status_code == 400 and "'lines'" in reply.json()["error"]["message"]


def test_logs_need_the_admin_credentials(live_server, admin):
    for auth in (None, (admin[0], "wrong")):
        for path in ("/logs", "/logs/", "/logs?html=true"):
            reply = requests.get(f"{live_server.url}{path}", auth=auth, timeout=10)
            assert reply.status_code == 401 and reply.headers["WWW-Authenticate"] == 'Basic realm="aiaa"'
            assert "aiaa.requests" not in reply.text


class ModelInState:
    """A served model in a given state. The registry loads models before serving today, so a model that is
    still loading (or failed) cannot be produced through it; this stands in for one."""

    task = None  # nothing to warm up or run

    def __init__(self, name: str, status: str, error: str | None = None):
        self.name, self.status, self.error = name, status, error

    def info(self) -> dict:
        extra = {"error": self.error} if self.error else {}
        return {"name": self.name, "type": "segmentation", "engine": "torch", "status": self.status, **extra}


def test_ready_is_503_until_every_model_is_loaded_and_names_refused_ones(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    from server.app import create_app
    from server.auth import AdminCredentials
    from server.registry import ModelRegistry
    from server.settings import Settings

    models = [
        ModelInState("spleen_a", "ready"),
        ModelInState("spleen_b", "loading"),
        ModelInState("spleen_c", "failed", "weights do not match"),
    ]
    settings = Settings(
        model_repo=tmp_path / "repo",
        log_dir=tmp_path / "logs",
        session_dir=tmp_path / "sessions",
        admin_credentials=AdminCredentials(*ADMIN),
    )
    registry = ModelRegistry(tmp_path / "repo", models)
    client = create_app(settings, registry=registry).test_client()
    reply = client.get("/ready")
    assert reply.status_code == 503 and reply.json["success"] is False
    message = reply.json["error"]["message"]
    assert "2 of 3" in message and "spleen_b (loading)" in message
    assert "spleen_c (failed: weights do not match)" in message
    assert "spleen_a" not in message
    assert client.get("/health").status_code == 200  # alive all the same

    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(client.get("/metrics").get_data(as_text=True))
        for s in family.samples
    }
    assert samples[("aiaa_models_loaded", ())] == 1
    states = {
        dict(labels)["model"]: (dict(labels)["status"], value)
        for (name, labels), value in samples.items()
        if name == "aiaa_model_ready"
    }
    assert states == {"spleen_a": ("ready", 1), "spleen_b": ("loading", 0), "spleen_c": ("failed", 0)}

    models[1].status = models[2].status = "ready"
    names = ["spleen_a", "spleen_b", "spleen_c"]
    ready = client.get("/ready").json
    assert {k: ready[k] for k in ("status", "models", "refused")} == {"status": "ready", "models": names, "refused": []}
    assert ready["store"]["kind"] == "memory" and ready["backend"] == {"kind": "in-process"}  # the embedded default

    # a model refused at start-up keeps the server ready (it will not load until replaced): named, no path
    registry.failed["old_one"] = "post_transforms[1] args.output_dir: '/srv/aiaa/secret dir' looks like a file path"
    reply = client.get("/ready")
    assert reply.status_code == 200
    assert {k: reply.json[k] for k in ("status", "models", "refused")} == {
        "status": "ready",
        "models": names,
        "refused": ["old_one"],
    }
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'aiaa_model_refused{model="old_one"} 1.0' in metrics and "/srv/aiaa" not in metrics
    dashboard = client.get("/v1/dashboard?format=json", headers={"Authorization": basic_auth(*ADMIN)}).json
    assert dashboard["refused"] == [
        {"name": "old_one", "reason": "post_transforms[1] args.output_dir: '… dir' looks like a file path"}
    ]

    # an app not started by `aiaa serve` has no log file: a clear 404, not a 500
    reply = client.get("/logs", headers={"Authorization": basic_auth(*ADMIN)})
    assert reply.status_code == 404 and "no log file" in reply.json["error"]["message"]


def basic_auth(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
