"""The cluster mode end to end, with real processes on 127.0.0.1 only: redis-server, a 2-node Ray cluster
(`ray.cluster_utils.Cluster`, shut down through its handle, never `ray stop`) and two `aiaa serve --ray
--redis` API processes on one shared model repository, beside an embedded server for reference.

One cluster for the whole module (Ray is heavy on 2 shared cores); its wall time is printed. The click
model's deployment has two replicas, at most one per node, so serving on both nodes is checked, and
killing the replica that holds a session sends its next click to the other one (volume from Redis).
"""

from __future__ import annotations

import re
import subprocess
import time

import numpy as np
import pytest
import requests
import SimpleITK as sitk
from aiaa_helpers import assert_same_grid, parse_result, post, read_mask, to_ijk
from cluster_helpers import RedisServer, cluster_phantom, upload
from conftest import generated_admin, start_server, stop_server

from aiaa_core.evaluation import centre_click
from aiaa_core.phantoms import LABELS

pytestmark = pytest.mark.slow

MODEL = "deepgrow_3d"
MAX_SESSIONS_FOR_BOTH_NODES = 8


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Redis, a head and a worker node, two API processes on them, an embedded server; all loopback."""
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    # Else Ray swaps 127.0.0.1 for the machine's own address: in the processes it starts (the environment,
    # read when they import ray) and in this one (the constant, read at each lookup; ray may be imported).
    environment = pytest.MonkeyPatch()
    environment.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    environment.setattr(ray_constants, "ENABLE_RAY_CLUSTER", False)

    started = time.monotonic()
    redis_server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    ray_cluster, apis = None, []
    try:
        node = {"num_cpus": 2, "node_ip_address": "127.0.0.1", "object_store_memory": 256 * 2**20}
        ray_cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
        ray_cluster.add_node(**node)
        repo = tmp_path_factory.mktemp("shared") / "model_repo"
        flags = ["--models", MODEL, "--model-repo", str(repo), "--redis", redis_server.url, "--ray"]
        flags += [ray_cluster.address, "--ray-min-replicas", "2", "--ray-max-replicas", "2"]
        flags += ["--ray-replicas-per-node", "1", "--ray-replica-cpus", "1", "--inference-threads", "1"]
        for name in ("a", "b"):
            apis.append(start_server(tmp_path_factory.mktemp(f"api-{name}"), *flags))
        embedded = start_server(tmp_path_factory.mktemp("embedded"), "--models", MODEL, "--inference-threads", "1")
        apis.append(embedded)
        yield {"redis": redis_server, "ray": ray_cluster, "a": apis[0], "b": apis[1], "embedded": embedded}
    finally:
        for api in apis:
            stop_server(api)
        if ray_cluster is not None:
            ray_cluster.shutdown()
        redis_server.stop()
        environment.undo()
        print(f"cluster module wall time: {time.monotonic() - started:.1f} s")


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    return cluster_phantom(tmp_path_factory.mktemp("phantom"), 415_101)


def click(url: str, session_id: str, clicks: dict, tmp_path) -> np.ndarray:
    _, name, data = parse_result(post(url, "deepgrow", MODEL, [], clicks, session_id=session_id))
    return to_ijk(read_mask(data, name, tmp_path))


def clicks_for(phantom, background: bool = False) -> dict:
    truth = to_ijk(phantom.label) == LABELS["spleen"]
    clicks = {"foreground": [centre_click(truth)], "background": []}
    if background:
        clicks["background"] = [[2, 2, 2]]
    return clicks


def served_by(*apis) -> list[dict]:
    """The replicas that answered these API replicas (from their /ready)."""
    ready = [requests.get(f"{api.url}/ready", timeout=30).json() for api in apis]
    return [entry for state in ready for entry in state["backend"]["served_by"]]


def test_clicks_on_the_cluster_equal_the_embedded_server_bit_for_bit(cluster, phantom, tmp_path):
    a, b, embedded = cluster["a"], cluster["b"], cluster["embedded"]
    phantom_, path = phantom
    session_id, reference_session = upload(a.url, path), upload(embedded.url, path)
    for clicks in (clicks_for(phantom_), clicks_for(phantom_, background=True)):
        expected = click(embedded.url, reference_session, clicks, tmp_path)
        assert expected.any()
        assert np.array_equal(click(b.url, session_id, clicks, tmp_path), expected)  # uploaded on A, clicked on B
        assert np.array_equal(click(a.url, session_id, clicks, tmp_path), expected)
    _, name, data = parse_result(post(a.url, "deepgrow", MODEL, [], clicks_for(phantom_), session_id=session_id))
    assert_same_grid(read_mask(data, name, tmp_path), sitk.ReadImage(str(path)))  # the uploaded file's grid
    ready = requests.get(f"{a.url}/ready", timeout=30).json()
    assert ready["backend"]["kind"] == "ray-serve" and ready["store"]["kind"] == "redis"
    assert ready["backend"]["deployments"][MODEL]["replicas"].get("RUNNING") == 2
    dashboard = requests.get(f"{a.url}/v1/dashboard", params={"format": "json"}, auth=generated_admin(a), timeout=30)
    shown = dashboard.json()["cluster"]
    assert shown["backend"]["served_by"] and shown["store"]["kind"] == "redis"
    metrics = requests.get(f"{a.url}/metrics", timeout=30).text
    assert re.search(rf'aiaa_backend_requests_total\{{model="{MODEL}",node="\w+",replica="\w+"\}} [1-9]', metrics)


def test_replicas_on_both_nodes_serve(cluster, phantom, tmp_path):
    a, b = cluster["a"], cluster["b"]
    phantom_, path = phantom
    clicks = clicks_for(phantom_)
    for n in range(MAX_SESSIONS_FOR_BOTH_NODES):  # new sessions go to the replica holding fewer
        click((a, b)[n % 2].url, upload(a.url, path), clicks, tmp_path)
        if len({entry["node"] for entry in served_by(a, b)}) == 2:
            break
    assert len({entry["node"] for entry in served_by(a, b)}) == 2
    assert len({entry["replica"] for entry in served_by(a, b)}) == 2


def test_killing_the_replica_that_holds_a_session(cluster, phantom, tmp_path):
    import ray

    a = cluster["a"]
    phantom_, path = phantom
    session_id, clicks = upload(a.url, path), clicks_for(phantom_)
    before_kill = served_by(a)
    first = click(a.url, session_id, clicks, tmp_path)
    holder = next(e for e in served_by(a) if e not in before_kill)  # the entry whose count grew
    ray.init(address=cluster["ray"].address, namespace="serve", _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        name = f"SERVE_REPLICA::aiaa-{MODEL}#{MODEL}#{holder['replica']}"
        ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    finally:
        ray.shutdown()
    after = click(a.url, session_id, clicks, tmp_path)  # another replica: the volume comes from Redis
    assert np.array_equal(first, after)
    assert any(e["replica"] != holder["replica"] for e in served_by(a) if e not in before_kill)


def test_redis_restarted_means_440_then_upload_again(cluster, phantom, tmp_path):
    a, b = cluster["a"], cluster["b"]
    phantom_, path = phantom
    session_id, clicks = upload(a.url, path), clicks_for(phantom_)
    click(b.url, session_id, clicks, tmp_path)
    cluster["redis"].restart()
    lost = post(b.url, "deepgrow", MODEL, [], clicks, session_id=session_id)
    assert lost.status_code == 440 and lost.json()["error"]["type"] == "SessionExpired"
    again = upload(b.url, path)
    assert click(a.url, again, clicks, tmp_path).any()


def test_everything_listens_on_loopback_only(cluster):
    pids = {str(api.process.pid) for api in (cluster["a"], cluster["b"])} | {str(cluster["redis"].process.pid)}
    listening = subprocess.run(["ss", "-tlnpH"], capture_output=True, text=True, check=True).stdout.splitlines()
    ours = [line for line in listening if any(f"pid={pid}," in line for pid in pids) or "ray" in line or "gcs" in line]
    assert ours, listening
    for line in ours:
        local = line.split()[3]
        assert local.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:", "[::1]:")), line
