"""Two `aiaa serve` processes sharing one model repository folder and a real redis-server: an install,
replacement or deletion through API A's admin API is served by API B within a bound (Redis pub/sub on
`aiaa:models`; the poll is set far beyond the bound, so only the message can make it), and two installs on
A and B at once both land. One pair of servers for the module; tiny TorchScript UNets from model_archives."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import requests
from admin_helpers import AUTH, phantom_file, put_model, segment, served, start_admin_server, two_parts
from cluster_helpers import RedisServer
from conftest import stop_server
from model_archives import model_bytes, tiny_unet, v4_config

from server.model_store import MARKER

pytestmark = pytest.mark.slow

BOUND_S = 20  # an install on one replica is served by the other within this
POLL_S = 600  # far beyond BOUND_S: convergence within the bound is the pub/sub message's doing


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Redis and two API replicas on one shared --model-repo (A started first seeds the app's model)."""
    shared = tmp_path_factory.mktemp("shared") / "model_repo"
    redis_server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    apis = []
    try:
        for name in ("a", "b"):
            folder = tmp_path_factory.mktemp(f"api-{name}")
            extra = ("--redis", redis_server.url, "--model-repo", str(shared), "--model-poll-s", str(POLL_S))
            apis.append(start_admin_server(folder, *extra))
        yield shared, apis, redis_server
    finally:
        for api in apis:
            stop_server(api)
        redis_server.stop()


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    return phantom_file(tmp_path_factory.mktemp("ct"))[0]


def upload(version: str = "4", seed: int = 0) -> dict:
    """A TorchScript model with its config; `version` is what /v1/models shows for it."""
    return two_parts({**v4_config(), "version": version}, "model.ts", model_bytes(tiny_unet(seed), "ts"))


def until(condition, what: str, bound_s: float = BOUND_S) -> float:
    """Seconds until `condition()` holds, polled; fails past the bound."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < bound_s, f"not within {bound_s} s: {what}"
        time.sleep(0.1)
    return time.monotonic() - started


def test_an_upload_on_a_serves_on_b(pair, ct, tmp_path):
    _, (a, b), _ = pair
    assert "sync_liver" not in served(b.url)
    reply = put_model(a.url, "sync_liver", upload())
    assert reply.status_code == 200, reply.text
    waited = until(lambda: "sync_liver" in served(b.url), "B serves the model installed on A")
    print(f"install on A served on B after {waited:.2f} s")
    _, on_a = segment(a.url, "sync_liver", ct, tmp_path)
    _, on_b = segment(b.url, "sync_liver", ct, tmp_path)
    assert np.array_equal(on_a, on_b) and on_b.any()
    sync = requests.get(f"{b.url}/ready", timeout=10).json()["model_sync"]
    assert sync["via"] == "redis" and sync["poll_s"] == POLL_S and sync["last_sync"] is not None


def test_a_replacement_on_a_serves_on_b(pair, ct, tmp_path):
    _, (a, b), _ = pair
    assert served(b.url)["sync_liver"]["version"] == "4"
    reply = put_model(a.url, "sync_liver", upload(version="4.7", seed=3))
    assert reply.status_code == 200, reply.text
    until(lambda: served(b.url)["sync_liver"]["version"] == "4.7", "B serves A's replacement")
    _, on_a = segment(a.url, "sync_liver", ct, tmp_path)
    _, on_b = segment(b.url, "sync_liver", ct, tmp_path)
    assert np.array_equal(on_a, on_b)


def test_a_deletion_on_a_is_a_404_on_b(pair, ct):
    _, (a, b), _ = pair
    assert "sync_liver" in served(b.url)
    assert requests.delete(f"{a.url}/admin/model/sync_liver", auth=AUTH, timeout=60).status_code == 200

    def gone_on_b() -> bool:
        reply = requests.post(
            f"{b.url}/v1/segmentation",
            params={"model": "sync_liver"},
            files={"datapoint": (ct.name, ct.read_bytes())},
            data={"params": "{}"},
            timeout=60,
        )
        return reply.status_code == 404 and reply.json()["error"]["type"] == "NotFound"

    until(gone_on_b, "B stops serving the model deleted on A")
    assert "sync_liver" not in served(b.url)


def test_concurrent_installs_on_a_and_b_both_land(pair):
    shared, (a, b), _ = pair
    replies = {}
    # Built here, not in the threads: `torch.jit.script` is not thread-safe (two at once in one process
    # failed in CPython's parser, "AST constructor recursion depth mismatch", and that install never ran).
    bodies = {name: upload(seed=len(name)) for name in ("sync_on_a", "on_b")}

    def install(api, name: str) -> None:
        try:
            replies[name] = put_model(api.url, name, bodies[name])
        except Exception as error:  # reported by the assertion below, not lost with the thread
            replies[name] = error

    threads = [
        threading.Thread(target=install, args=(a, "sync_on_a")),
        threading.Thread(target=install, args=(b, "on_b")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    codes = {name: getattr(reply, "status_code", reply) for name, reply in replies.items()}
    assert codes == {"sync_on_a": 200, "on_b": 200}
    for api in (a, b):
        until(lambda api=api: {"sync_on_a", "on_b"} <= set(served(api.url)), f"{api.url} serves both installs")
    committed = sorted(p.name.split("@")[0] for p in shared.iterdir() if (p / MARKER).is_file())
    assert committed.count("sync_on_a") == 1 and committed.count("on_b") == 1


def test_after_redis_restarts_an_install_still_reaches_b(pair):
    _, (a, b), redis_server = pair
    redis_server.restart()  # every subscription dropped: B subscribes again and re-reads the folder
    reply = put_model(a.url, "sync_after_restart", upload())
    assert reply.status_code == 200, reply.text
    until(lambda: "sync_after_restart" in served(b.url), "B serves an install made after Redis restarted")
