"""Connections, Host names and browser origins (issue 12): idle or stalled clients cannot starve the others
(a live waitress server), DNS rebinding gets 421, no CORS header unless configured, and a cross-origin
form post from an unlisted page is refused before it runs."""

from __future__ import annotations

import socket
import time
from urllib.parse import urlsplit

import pytest
import requests
from conftest import start_server, stop_server

from server.app import create_app, too_large_message
from server.cli import parser
from server.registry import ModelRegistry
from server.serve_command import settings_from_args, waitress_options
from server.settings import Settings

IDLE_CONNECTIONS = 150
CHANNEL_TIMEOUT_S = 5  # the test server's; its cleanup runs every 2 s
HEALTH_BOUND_S = 2.5  # well under the channel timeout: /health must not wait for idle clients to be dropped


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    live = start_server(
        tmp_path_factory.mktemp("connections"),
        "--models",
        "deepgrow_3d",
        "--no-warm-up",
        "--channel-timeout",
        str(CHANNEL_TIMEOUT_S),
    )
    yield live
    stop_server(live)


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname, parts.port


def test_health_answers_under_150_idle_connections(server):
    idle = []
    try:
        for _ in range(IDLE_CONNECTIONS):
            idle.append(socket.create_connection(address(server.url), timeout=10))
        half_requests = idle[: IDLE_CONNECTIONS // 2]
        for sock in half_requests:  # half of them stall in the middle of a request line
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        started = time.monotonic()
        reply = requests.get(f"{server.url}/health", timeout=CHANNEL_TIMEOUT_S * 4)
        elapsed = time.monotonic() - started
        assert reply.status_code == 200 and reply.json()["status"] == "ok"
        assert elapsed < HEALTH_BOUND_S, f"/health took {elapsed:.1f} s under {IDLE_CONNECTIONS} idle connections"
    finally:
        for sock in idle:
            sock.close()


@pytest.mark.parametrize("stall", [b"", b"PUT /session/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n"])
def test_a_silent_connection_is_closed_after_the_channel_timeout(server, stall):
    with socket.create_connection(address(server.url), timeout=CHANNEL_TIMEOUT_S * 4) as sock:
        sock.sendall(stall)  # nothing, or headers announcing a body that never comes
        started = time.monotonic()
        assert sock.recv(1024) == b""  # the server closed it (a timeout here would raise)
        assert CHANNEL_TIMEOUT_S - 1 <= time.monotonic() - started <= CHANNEL_TIMEOUT_S * 3


def test_waitress_limits_follow_the_settings():
    options = waitress_options(Settings(max_upload_bytes=8 * 2**20, connection_limit=300, channel_timeout_s=30))
    assert options["connection_limit"] == 300 and options["channel_timeout"] == 30
    assert options["asyncore_use_poll"] is True  # select() fails past 1024 descriptors
    assert 8 * 2**20 < options["max_request_body_size"] <= 9 * 2**20  # the app's limit, not waitress' 1 GB
    defaults = waitress_options(Settings())
    assert defaults["connection_limit"] >= 2 * IDLE_CONNECTIONS and defaults["max_request_body_size"] > 2 * 2**30
    # the 413 quotes the limit applied, unrounded (0.3 MB used to read "0 MB")
    assert "at most 0.3 MB (314572 bytes)" in too_large_message(314_572)
    assert "at most 2048 MB (2147483648 bytes)" in too_large_message(Settings().max_upload_bytes)


# --- Host names and origins, on the app itself ---------------------------------------------------------


def app_client(tmp_path, **settings):
    settings = Settings(
        model_repo=tmp_path / "repo", log_dir=tmp_path / "logs", session_dir=tmp_path / "sessions", **settings
    )
    return create_app(settings, registry=ModelRegistry(tmp_path / "repo", [])).test_client()


def get(client, host: str, path: str = "/health", **headers):
    return client.get(path, headers={"Host": host, **headers})


def test_loopback_bind_answers_loopback_names_only(tmp_path):
    client = app_client(tmp_path)  # 127.0.0.1 by default
    for host in ("127.0.0.1:5000", "localhost:5000", "LOCALHOST", "[::1]:5000", "localhost."):
        assert get(client, host).status_code == 200, host
    for host in ("attacker.example:5000", "127.0.0.1.attacker.example", "localhost.attacker.example", ""):
        reply = get(client, host)
        assert reply.status_code == 421 and reply.json["error"]["type"] == "MisdirectedRequest", host
        assert "allowed-hosts" in reply.json["error"]["message"]


def test_allowed_hosts_setting(tmp_path):
    client = app_client(tmp_path, host="0.0.0.0", allowed_hosts=("aiaa.hospital.org", ".radiology.example"))
    for host in ("aiaa.hospital.org", "AIAA.hospital.org:443", "ct.radiology.example", "127.0.0.1:5000"):
        assert get(client, host).status_code == 200, host
    for host in ("hospital.org", "evil.aiaa.hospital.org", "radiology.example.evil", "10.0.0.5"):
        assert get(client, host).status_code == 421, host
    public = app_client(tmp_path / "public", host="0.0.0.0")  # a public bind without the setting: any name
    assert get(public, "anything.example").status_code == 200
    star = app_client(tmp_path / "star", allowed_hosts=("*",))
    assert get(star, "anything.example").status_code == 200


def test_no_cors_header_by_default_and_cross_origin_writes_refused(tmp_path):
    client = app_client(tmp_path)
    reply = get(client, "127.0.0.1:5000", "/v1/models", Origin="https://attacker.example")
    assert reply.status_code == 200 and "Access-Control-Allow-Origin" not in reply.headers
    preflight = client.options(
        "/session/", headers={"Origin": "https://attacker.example", "Access-Control-Request-Method": "PUT"}
    )
    assert "Access-Control-Allow-Origin" not in preflight.headers
    form_post = client.post(
        "/v1/segmentation?model=any", headers={"Host": "127.0.0.1:5000", "Origin": "https://attacker.example"}
    )
    assert form_post.status_code == 403 and "Cross-origin" in form_post.json["error"]["message"]
    # the server's own pages (/docs' "try it out") post same-origin; the AIAA clients send no Origin
    same = client.post("/v1/segmentation?model=any", headers={"Host": "localhost", "Origin": "http://localhost"})
    assert same.status_code == 404  # past the policy: the model is unknown
    assert client.post("/v1/segmentation?model=any", headers={"Host": "localhost"}).status_code == 404


def test_cors_origins_setting(tmp_path):
    viewer = "https://viewer.hospital.org"
    client = app_client(tmp_path, cors_origins=(viewer,))
    reply = get(client, "localhost", "/v1/models", Origin=viewer)
    assert reply.headers["Access-Control-Allow-Origin"] == viewer and "Origin" in reply.headers["Vary"]
    preflight = client.options(
        "/session/", headers={"Host": "localhost", "Origin": viewer, "Access-Control-Request-Method": "PUT"}
    )
    assert preflight.headers["Access-Control-Allow-Origin"] == viewer
    assert "PUT" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Access-Control-Allow-Credentials" not in preflight.headers  # never with the admin's credentials
    assert client.post("/v1/segmentation?model=any", headers={"Host": "localhost", "Origin": viewer}).status_code == 404
    other = get(client, "localhost", "/v1/models", Origin="https://viewer.hospital.org.attacker.example")
    assert "Access-Control-Allow-Origin" not in other.headers


def test_cli_flags_reach_the_settings():
    args = parser().parse_args(
        ["serve", "--allowed-hosts", "a.example, .b.example", "--cors-origins", "https://v.example"]
        + ["--connection-limit", "250", "--channel-timeout", "15"]
    )
    settings = settings_from_args(args)
    assert settings.allowed_hosts == ("a.example", ".b.example") and settings.cors_origins == ("https://v.example",)
    assert (settings.connection_limit, settings.channel_timeout_s) == (250, 15.0)
    defaults = settings_from_args(parser().parse_args(["serve"]))
    assert defaults.allowed_hosts == () and defaults.cors_origins == ()
