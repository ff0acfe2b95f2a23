"""Metrics and the dashboard's data against a real server process: after a scripted mix of requests
(good ones, 4xx, sessions, one inference), /v1/dashboard?format=json and /metrics count exactly those
requests; the dashboard needs the admin credentials; the log has one line per request and no file names."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import requests
from admin_helpers import start_server_with_admin_file
from conftest import stop_server
from prometheus_client.parser import text_string_to_metric_families

from aiaa_core.phantoms import make_phantom, write_phantom

ADMIN = ("ops-admin", "metrics-test-password")
MODEL = "segmentation_spleen"
PATIENT_STEM = "DOE_JOHN_1957"  # an upload named like a patient: it must never reach the log


class ScriptedClient:
    """Sends requests and keeps what the server must have counted: (endpoint, method, model, status) → n."""

    def __init__(self, url: str):
        self.url = url
        self.expected: Counter = Counter()

    def call(self, method: str, path: str, endpoint: str, status: int, model: str = "-", **kwargs):
        reply = requests.request(method, f"{self.url}{path}", timeout=120, **kwargs)
        assert reply.status_code == status, reply.text
        self.expected[(endpoint, method, model, str(status))] += 1
        return reply

    def dashboard(self) -> dict:
        return self.call("GET", "/v1/dashboard?format=json", "/v1/dashboard", 200, auth=ADMIN).json()

    def metrics(self) -> dict:
        """Every sample of /metrics as {(name, sorted label items): value}."""
        text = self.call("GET", "/metrics", "/metrics", 200).text
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("metrics")
    live = start_server_with_admin_file(tmp, ADMIN, "--models", MODEL)
    yield live
    stop_server(live)


@pytest.fixture(scope="module")
def client(server, tmp_path_factory) -> ScriptedClient:
    """The scripted mix, sent once; later tests add their own requests through the same client."""
    image_path, _ = write_phantom(
        make_phantom(600_001, size=(64, 56, 40), spacing=(4.0, 4.0, 5.0)), tmp_path_factory.mktemp("img"), PATIENT_STEM
    )
    image = image_path.read_bytes()
    c = ScriptedClient(server.url)
    for _ in range(3):
        c.call("GET", "/v1/models", "/v1/models", 200)
    for _ in range(2):
        c.call("GET", f"/v1/models?model={MODEL}", "/v1/models", 200, MODEL)
    c.call("GET", "/v1/models?model=no_such_model", "/v1/models", 404, "unknown")
    c.call("GET", "/health", "/health", 200)
    c.call("GET", "/ready", "/ready", 200)
    c.call("GET", "/no/such/route", "unmatched", 404)
    c.call("POST", f"/v1/segmentation?model={MODEL}", "/v1/segmentation", 400, MODEL, data={"params": "{}"})
    c.call("GET", "/v1/dashboard", "/v1/dashboard", 401)
    c.call("GET", "/logs?lines=3", "/logs", 401)
    c.call("GET", "/v1/dashboard?format=json", "/v1/dashboard", 401, auth=(ADMIN[0], "wrong"))

    kept = c.call("PUT", "/session/", "/session/", 200, files={"image": (image_path.name, image)}).json()
    used = c.call("PUT", "/session/", "/session/", 200, files={"image": (image_path.name, image)}).json()
    c.call("GET", f"/session/{used['session_id']}", "/session/<session_id>", 200)
    c.call(
        "POST",
        f"/v1/segmentation?model={MODEL}&session_id={used['session_id']}&output=json",
        "/v1/segmentation",
        200,
        MODEL,
        data={"params": "{}"},
    )
    c.call("DELETE", f"/session/{used['session_id']}", "/session/<session_id>", 200)
    c.call("GET", f"/session/{used['session_id']}", "/session/<session_id>", 404)
    c.call(
        "POST",
        f"/v1/segmentation?model={MODEL}&session_id={used['session_id']}",
        "/v1/segmentation",
        440,
        MODEL,
        data={"params": "{}"},
    )
    logs = c.call("GET", "/logs?lines=3", "/logs", 200, auth=ADMIN)
    assert len(logs.text.splitlines()) == 3
    c.kept_session, c.used_session = kept, used
    return c


def by_endpoint(expected: Counter) -> dict:
    rows: dict = {}
    for (endpoint, method, _, status), n in expected.items():
        row = rows.setdefault((endpoint, method), {"requests": 0, "errors": 0})
        row["requests"] += n
        row["errors"] += n if int(status) >= 400 else 0
    return rows


def tally(expected: Counter, index: int) -> dict:
    counts: Counter = Counter()
    for key, n in expected.items():
        counts[key[index]] += n
    return dict(counts)


def test_dashboard_json_counts_exactly_the_traffic(client):
    expected = Counter(client.expected)  # the dashboard's own request is counted after its reply is built
    data = client.dashboard()
    requests_ = data["requests"]
    assert requests_["total"] == sum(expected.values())
    assert requests_["errors"] == sum(n for key, n in expected.items() if int(key[3]) >= 400)
    rows = requests_["by_endpoint"]
    assert {(r["endpoint"], r["method"]): {"requests": r["requests"], "errors": r["errors"]} for r in rows} == (
        by_endpoint(expected)
    )
    assert requests_["by_model"] == tally(expected, 2)
    assert requests_["by_status"] == tally(expected, 3)
    assert sum(data["series"]["requests"]) == requests_["total"]  # all of it in the last hour's chart
    assert sum(data["series"]["errors"]) == requests_["errors"]

    (model,) = data["models"]
    assert (model["name"], model["type"], model["status"]) == (MODEL, "segmentation", "ready")
    assert model["engine"] and model["requests"] == tally(expected, 2)[MODEL]
    assert model["inference_ms"] and all(ms >= 0 for ms in model["inference_ms"].values())

    segmentation = next(r for r in requests_["by_endpoint"] if r["endpoint"] == "/v1/segmentation")
    assert 0 < segmentation["p50_ms"] <= segmentation["p95_ms"] <= segmentation["p99_ms"]
    overall = data["latency_ms"]
    assert 0 < overall["p50_ms"] <= overall["p95_ms"] <= overall["p99_ms"]

    sessions = data["sessions"]
    assert sessions["count"] == 1 and [s["id"] for s in sessions["items"]] == [client.kept_session["session_id"]]
    assert sessions["bytes"] == client.kept_session["session_info"]["bytes"] > 0
    assert data["process"]["rss_bytes"] > 0 and data["server"]["uptime_s"] >= 0

    # newest first: the 440, the 404 of the deleted session, ..., the unknown model
    recent = data["recent_errors"]
    assert [e["status"] for e in recent[:2]] == [440, 404]
    unknown = next(e for e in recent if e["endpoint"] == "/v1/models")
    assert unknown["status"] == 404 and "no_such_model" in unknown["message"] and unknown["model"] == "unknown"
    assert PATIENT_STEM not in json.dumps(data)


def test_metrics_count_exactly_the_traffic(client):
    samples = client.metrics()  # generated before its own request is counted
    expected = Counter(client.expected)
    expected[("/metrics", "GET", "-", "200")] -= 1
    counted = {
        (labels["endpoint"], labels["method"], labels["model"], labels["status"]): value
        for (name, items), value in samples.items()
        if name == "aiaa_requests_total"
        for labels in [dict(items)]
    }
    assert counted == {key: n for key, n in expected.items() if n}
    histogram_counts = {
        (labels["endpoint"], labels["method"], labels["model"], labels["status"]): value
        for (name, items), value in samples.items()
        if name == "aiaa_request_duration_seconds_count"
        for labels in [dict(items)]
    }
    assert histogram_counts == counted

    stages = {
        dict(items)["stage"]: value
        for (name, items), value in samples.items()
        if name == "aiaa_inference_seconds_count" and dict(items)["model"] == MODEL
    }
    assert stages and all(count == 1 for count in stages.values())  # one inference, every stage once
    assert samples[("aiaa_sessions", ())] == 1
    assert samples[("aiaa_session_bytes", ())] == client.kept_session["session_info"]["bytes"]
    assert samples[("aiaa_models_loaded", ())] == 1
    ready = [dict(items) for (name, items), value in samples.items() if name == "aiaa_model_ready" and value == 1]
    assert [(r["model"], r["status"]) for r in ready] == [(MODEL, "ready")]
    assert not [name for name, _ in samples if name == "aiaa_model_refused"]  # nothing refused at start-up
    assert samples[("process_resident_memory_bytes", ())] > 0
    # no raw path, session id or unknown model name became a label value
    labels_text = json.dumps(sorted(samples))
    assert client.kept_session["session_id"] not in labels_text and "no_such_model" not in labels_text


def test_dashboard_refuses_anonymous_and_wrong_credentials(client):
    for auth in (None, (ADMIN[0], "wrong"), ("someone", ADMIN[1])):
        for path in ("/v1/dashboard", "/v1/dashboard?format=json"):
            reply = client.call("GET", path, "/v1/dashboard", 401, auth=auth)
            assert reply.headers["WWW-Authenticate"] == 'Basic realm="aiaa"'
            assert reply.json()["success"] is False and "<html" not in reply.text


def test_dashboard_page_is_served_with_its_local_assets(client):
    page = client.call("GET", "/v1/dashboard", "/v1/dashboard", 200, auth=ADMIN)
    assert page.headers["Content-Type"].startswith("text/html")
    assert "://" not in page.text  # every asset from this server, none from a CDN
    for asset in ("vendor/uplot/uPlot.iife.min.js", "vendor/uplot/uPlot.min.css", "dashboard.js", "dashboard.css"):
        assert f"/static/{asset}" in page.text
        reply = client.call("GET", f"/static/{asset}", "/static/<path:filename>", 200)
        assert len(reply.content) > 500
    bad = client.call("GET", "/v1/dashboard?format=xml", "/v1/dashboard", 400, auth=ADMIN)
    assert "format" in bad.json()["error"]["message"]


def test_one_log_line_per_request_and_no_patient_data(client, server):
    text = (server.log_dir / "aiaa.log").read_text(encoding="utf-8")
    request_lines = [line for line in text.splitlines() if " aiaa.requests: method=" in line]
    assert len(request_lines) == sum(client.expected.values())
    assert sum(" method=PUT path=/session/ model=- session=- status=200 " in line for line in request_lines) == 2
    # the session as a tag that follows it from request to request, never its id (which grants its use)
    seg = f" path=/v1/segmentation model={MODEL} session=sid-"
    (inference,) = [line for line in request_lines if seg in line and " status=200 " in line]
    tag = inference.split(" session=")[1].split()[0]
    lines_of_used = [line for line in request_lines if f" session={tag} " in line]
    assert [line.split(" method=")[1].split()[0] for line in lines_of_used] == ["GET", "POST", "DELETE", "GET", "POST"]
    assert " path=/session/<session_id> " in lines_of_used[0]
    for session in (client.used_session, client.kept_session):
        assert session["session_id"] not in text
    assert PATIENT_STEM not in text  # neither the upload's file name nor anything of its body


def test_ready_reports_every_model(client):
    reply = client.call("GET", "/ready", "/ready", 200)
    assert reply.json()["models"] == [MODEL] and reply.json()["refused"] == []
