"""Section 1 of the contract against a live server: no redirects (the clients do not follow 3xx), the C++
client's `image` field with a Windows path as file name, quote_plus-encoded query values, and the stray
fields a session upload may carry."""

from __future__ import annotations

import http.client
from urllib.parse import quote_plus, urlsplit

import pytest
import requests
from aiaa_helpers import assert_same_grid, parse_result, read_mask

from aiaa_core.phantoms import make_phantom, write_phantom


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    ph = make_phantom(600_001, size=(64, 56, 40), spacing=(4.0, 4.0, 4.0), orientation="LPS")
    path, _ = write_phantom(ph, tmp_path_factory.mktemp("transport"), extension=".nrrd")
    return ph, path


def raw_request(url: str, method: str, path: str, body: bytes = b"", headers: dict | None = None):
    """One request with http.client, as the AIAA clients send it: no redirect is ever followed."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    conn.request(method, path, body=body, headers=headers or {})
    reply = conn.getresponse()
    data = reply.read()
    conn.close()
    return reply.status, data


@pytest.mark.parametrize(
    "method,path,expected",  # /logs needs the admin credentials: 401, not a redirect
    [("GET", "/v1/models", 200), ("GET", "/v1/models/", 200), ("GET", "/logs", 401), ("GET", "/logs/", 401)]
    + [("GET", "/health", 200)],
)
def test_routes_answer_without_redirect(live_server, method, path, expected):
    status, _ = raw_request(live_server.url, method, path)
    assert status == expected


def test_session_put_with_or_without_slash_never_redirects(live_server, phantom):
    _, path = phantom
    for route in ("/session/", "/session"):
        reply = requests.put(
            f"{live_server.url}{route}",
            params={"expiry": 60, "save_as": "ignored"},
            files={"image": (path.name, path.read_bytes())},
            data={"params": "{}"},  # a stray params field is accepted and ignored
            allow_redirects=False,
            timeout=60,
        )
        assert reply.status_code == 200, reply.text
        assert requests.delete(f"{live_server.url}/session/{reply.json()['session_id']}", timeout=10).ok


def test_cpp_client_image_field_windows_path_and_quote_plus_query(live_server, phantom, tmp_path):
    ph, path = phantom
    query = "model=" + quote_plus("segmentation_spleen") + "&output=" + quote_plus("multipart")
    reply = requests.post(
        f"{live_server.url}/v1/segmentation?{query}",
        files={"image": ("C:\\Users\\dr x\\scans\\" + path.name, path.read_bytes())},
        data={"params": "{}"},
        timeout=120,
    )
    params, name, data = parse_result(reply)
    assert "points" in params
    assert_same_grid(read_mask(data, name, tmp_path), ph.image)
