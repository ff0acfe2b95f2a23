"""Models an older server installed that today's checks refuse at start-up are visible to the admin, not
only in the log: /ready names them (and stays 200: they never load until replaced, and the other models
serve), /metrics has `aiaa_model_refused{model}`, the dashboard lists each with a short reason. No reply
carries a file path of the server beyond the model's name, and nothing of the payloads ran.
"""

from __future__ import annotations

import pytest
import requests
from admin_helpers import start_server_with_admin_file
from conftest import stop_server
from model_archives import installed_the_old_way, mmar_files, plant_hostile_models, v4_config, zip_bytes
from prometheus_client.parser import text_string_to_metric_families

ADMIN = ("refused-admin", "refused-test-password")
MODEL = "segmentation_spleen"
REFUSED = ["alias_reader", "setstate", "writer"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server whose repository holds three hostile models committed the old way (marker, no checks)."""
    tmp = tmp_path_factory.mktemp("refused")
    repo, marker = tmp / "model_repo", tmp / "ran"
    repo.mkdir()
    plant_hostile_models(repo, marker)
    writer = v4_config()  # its reason quotes the absolute path it would write to: that must not get out
    writer["post_transforms"].insert(1, {"name": "SaveImaged", "args": {"keys": "pred", "output_dir": str(tmp / "w")}})
    installed_the_old_way(repo, "writer", mmar_files(writer))
    live = start_server_with_admin_file(tmp, ADMIN, "--models", MODEL)
    live.tmp, live.marker = tmp, marker
    yield live
    stop_server(live)


def refused_gauges(url: str) -> dict[str, float]:
    text = requests.get(f"{url}/metrics", timeout=30).text
    return {
        sample.labels["model"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "aiaa_model_refused"
        for sample in family.samples
    }


def test_ready_stays_ready_and_names_the_refused_models(server):
    reply = requests.get(f"{server.url}/ready", timeout=30)
    assert reply.status_code == 200
    ready = reply.json()
    assert {k: ready[k] for k in ("status", "models", "refused")} == {
        "status": "ready",
        "models": [MODEL],
        "refused": REFUSED,
    }
    served = {m["name"] for m in requests.get(f"{server.url}/v1/models", timeout=30).json()}
    assert served == {MODEL}
    assert not server.marker.exists() and not (server.tmp / "w").exists()


def test_metrics_have_one_refused_gauge_per_model(server):
    assert refused_gauges(server.url) == {name: 1.0 for name in REFUSED}
    assert str(server.tmp) not in requests.get(f"{server.url}/metrics", timeout=30).text


def test_dashboard_lists_each_with_a_short_reason_and_no_path(server):
    assert requests.get(f"{server.url}/v1/dashboard?format=json", timeout=30).status_code == 401
    reply = requests.get(f"{server.url}/v1/dashboard?format=json", auth=ADMIN, timeout=30)
    assert reply.status_code == 200 and str(server.tmp) not in reply.text
    reasons = {item["name"]: item["reason"] for item in reply.json()["refused"]}
    assert list(reasons) == REFUSED
    assert "'subprocess.call' names a Python object" in reasons["alias_reader"]
    assert "from_file" in reasons["setstate"]
    assert reasons["writer"].startswith("post_transforms[1] args.output_dir: '…' looks like a file path")
    assert all(len(reason) <= 200 for reason in reasons.values())
    page = requests.get(f"{server.url}/v1/dashboard", auth=ADMIN, timeout=30)
    assert page.status_code == 200 and 'id="refused-section"' in page.text and str(server.tmp) not in page.text


def test_a_new_version_installed_by_the_admin_is_no_longer_refused(server):
    archive = {"data": ("clara_tiny.zip", zip_bytes(mmar_files(v4_config())), "application/octet-stream")}
    reply = requests.put(f"{server.url}/admin/model/setstate", files=archive, auth=ADMIN, timeout=300)
    assert reply.status_code == 200, reply.text
    assert requests.get(f"{server.url}/ready", timeout=30).json()["refused"] == ["alias_reader", "writer"]
    assert refused_gauges(server.url) == {"alias_reader": 1.0, "writer": 1.0}
    dashboard = requests.get(f"{server.url}/v1/dashboard?format=json", auth=ADMIN, timeout=30).json()
    assert [item["name"] for item in dashboard["refused"]] == ["alias_reader", "writer"]
    assert not server.marker.exists()
