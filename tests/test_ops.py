"""Operations endpoints against a live server: /health, /logs (text and self-refreshing HTML)."""

from __future__ import annotations

import requests


def test_health(live_server):
    reply = requests.get(f"{live_server.url}/health", timeout=10)
    assert reply.status_code == 200 and reply.json()["status"] == "ok"


def test_logs_lines_and_structured_request_lines(live_server):
    requests.get(f"{live_server.url}/v1/models", params={"model": "segmentation_spleen"}, timeout=10)
    for path in ("/logs", "/logs/"):
        reply = requests.get(f"{live_server.url}{path}", params={"lines": 3}, timeout=10)
        assert reply.status_code == 200 and reply.headers["Content-Type"].startswith("text/plain")
        assert len(reply.text.splitlines()) == 3
    text = requests.get(f"{live_server.url}/logs", timeout=10).text
    assert "method=GET path=/v1/models model=segmentation_spleen session=- status=200" in text


def test_logs_html_refreshes_itself_and_escapes(live_server):
    reply = requests.get(f"{live_server.url}/logs", params={"html": "true", "lines": 5}, timeout=10)
    assert reply.headers["Content-Type"].startswith("text/html")
    assert 'http-equiv="refresh"' in reply.text and "<pre>" in reply.text


def test_logs_bad_lines(live_server):
    reply = requests.get(f"{live_server.url}/logs", params={"lines": "many"}, timeout=10)
    assert reply.status_code == 400 and "whole number" in reply.json()["error"]["message"]
