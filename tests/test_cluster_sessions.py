"""Two `aiaa serve` processes sharing their sessions through a real redis-server (stateless API replicas):
a session uploaded on A is clicked on B with the same mask, survives A being killed, and a restarted
(emptied) Redis gives the 440 that AIAA clients answer by uploading again. A bounded load across both."""

from __future__ import annotations

import statistics
import threading
import time

import numpy as np
import pytest
import requests
from aiaa_helpers import assert_same_grid, parse_result, post, read_mask, to_ijk
from cluster_helpers import RedisServer, cluster_phantom, upload
from conftest import start_server, stop_server

from aiaa_core.evaluation import centre_click, dice
from aiaa_core.phantoms import LABELS

pytestmark = pytest.mark.slow

LOAD_CLICKS = 24
LOAD_THREADS = 4
LOAD_DEADLINE_S = 240


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Redis and two API processes on it (own model repositories: the sessions are what they share)."""
    redis_server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    apis = []
    try:
        for name in ("a", "b"):
            apis.append(start_server(tmp_path_factory.mktemp(f"api-{name}"), "--redis", redis_server.url))
        yield redis_server, apis
    finally:
        for api in apis:
            stop_server(api)
        redis_server.stop()


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return cluster_phantom(tmp_path_factory.mktemp("phantom"), 415_001)


def click(url: str, session_id: str, clicks: dict, tmp_path):
    reply = post(url, "deepgrow", "deepgrow_3d", [], clicks, session_id=session_id)
    _, name, data = parse_result(reply)
    return read_mask(data, name, tmp_path)


def clicks_for(phantom) -> dict:
    return {"foreground": [centre_click(to_ijk(phantom.label) == LABELS["spleen"])], "background": []}


def test_a_session_uploaded_on_a_is_clicked_on_b(cluster, phantom, tmp_path):
    _, (a, b) = cluster
    phantom_, path = phantom
    session_id = upload(a.url, path)
    info = requests.get(f"{b.url}/session/{session_id}", timeout=10)
    assert info.status_code == 200 and info.json()["size"] == list(phantom_.image.GetSize())
    clicks = clicks_for(phantom_)
    on_b, on_a = click(b.url, session_id, clicks, tmp_path), click(a.url, session_id, clicks, tmp_path)
    assert_same_grid(on_b, phantom_.image)
    assert np.array_equal(to_ijk(on_a), to_ijk(on_b))  # the same volume on both replicas, bit for bit
    assert dice(to_ijk(on_b), to_ijk(phantom_.label) == LABELS["spleen"]) > 0.5
    ready = requests.get(f"{b.url}/ready", timeout=10).json()
    assert ready["store"]["kind"] == "redis" and ready["store"]["reachable"] is True
    assert requests.delete(f"{a.url}/session/{session_id}", timeout=10).json()["deleted"] is True
    assert post(b.url, "deepgrow", "deepgrow_3d", [], clicks, session_id=session_id).status_code == 440


def test_bounded_load_across_both_replicas(cluster, phantom, tmp_path):
    _, apis = cluster
    phantom_, path = phantom
    sessions = [upload(api.url, path) for api in apis]
    clicks, latencies, errors = clicks_for(phantom_), [], []
    deadline = time.monotonic() + LOAD_DEADLINE_S

    def worker(n: int) -> None:
        for i in range(n, LOAD_CLICKS, LOAD_THREADS):
            if time.monotonic() > deadline:
                errors.append("deadline")
                return
            api, session_id = apis[i % 2], sessions[(i // 2) % 2]  # each session clicked through both replicas
            started = time.perf_counter()
            reply = post(api.url, "deepgrow", "deepgrow_3d", [], clicks, session_id=session_id)
            latencies.append(time.perf_counter() - started)
            if reply.status_code != 200:
                errors.append(f"{reply.status_code} {reply.text[:200]}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(LOAD_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(latencies) == LOAD_CLICKS
    print(f"load: {LOAD_CLICKS} clicks, p50 {statistics.median(latencies):.3f} s, max {max(latencies):.3f} s")


def test_killing_a_replica_mid_session_loses_nothing(cluster, phantom, tmp_path):
    redis_server, (a, b) = cluster
    phantom_, path = phantom
    session_id = upload(a.url, path)
    clicks = clicks_for(phantom_)
    before = click(a.url, session_id, clicks, tmp_path)
    a.process.kill()  # a crash, not a shutdown
    a.process.wait(timeout=20)
    after = click(b.url, session_id, clicks, tmp_path)
    assert np.array_equal(to_ijk(before), to_ijk(after))


def test_redis_restarted_means_440_then_upload_again(cluster, phantom, tmp_path):
    redis_server, (_, b) = cluster
    phantom_, path = phantom
    session_id = upload(b.url, path)
    clicks = clicks_for(phantom_)
    click(b.url, session_id, clicks, tmp_path)  # B holds a local copy: Redis still decides
    redis_server.restart()
    lost = post(b.url, "deepgrow", "deepgrow_3d", [], clicks, session_id=session_id)
    assert lost.status_code == 440 and lost.json()["error"]["type"] == "SessionExpired"
    again = upload(b.url, path)
    assert_same_grid(click(b.url, again, clicks, tmp_path), phantom_.image)
