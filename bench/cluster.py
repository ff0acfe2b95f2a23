"""The cluster mode's cost and scaling (issue 15), against real processes on loopback only.

    .venv/bin/python bench/cluster.py [--size 512 512 100] [--clicks 20] [--clients 4] [--out FILE]

1. Added latency per click: one `aiaa serve --redis --ray` API on a Ray cluster against the embedded
   server (same phantom, same click, alternating so both see the same machine load); also what the backend
   itself reports as the round trip to the replica beyond the replica's own time (`latencies.remote`).
2. Throughput with 1 and 2 Ray worker nodes (one click-model replica per worker node; the head has no CPUs
   for replicas): `--clients` threads clicking their own sessions through the API for a fixed count.

Every process is started here and stopped through its own handle (Ray through `Cluster.shutdown`, never
`ray stop`). Rewrites bench/results/cluster.md (or --out) with the date, the machine and the command.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import redis
import requests

REPO = Path(__file__).resolve().parents[1]

from processes import Server, free_port, start_aiaa  # noqa: E402

from aiaa_core.evaluation import centre_click  # noqa: E402
from aiaa_core.phantoms import LABELS, make_phantom, write_phantom  # noqa: E402
from aiaa_core.volumes import to_array  # noqa: E402

MODEL = "deepgrow_3d"
GOAL_MS = 30.0


class RedisProcess:
    """Debian's redis-server on a free loopback port, no persistence."""

    def __init__(self, folder: Path):
        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not installed (`make redis`)")
        command = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen([*command, "--dir", str(folder)], stdout=subprocess.DEVNULL)
        client, deadline = redis.Redis(host="127.0.0.1", port=self.port), time.monotonic() + 20
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


class Setup:
    """Redis, a Ray cluster (head without CPUs + `workers` nodes) and one cluster API process."""

    def __init__(self, tmp: Path, workers: int, threads: int):
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        from ray.cluster_utils import Cluster

        self.redis = RedisProcess(tmp)
        node = {"node_ip_address": "127.0.0.1", "object_store_memory": 512 * 2**20}
        self.ray = Cluster(initialize_head=True, head_node_args={**node, "num_cpus": 0, "include_dashboard": False})
        for _ in range(workers):
            self.ray.add_node(**node, num_cpus=2)
        flags = ["--models", MODEL, "--redis", self.redis.url, "--ray", self.ray.address, "--inference-threads"]
        flags += [str(threads), "--ray-min-replicas", str(workers), "--ray-max-replicas", str(workers)]
        flags += ["--ray-replicas-per-node", "1", "--ray-replica-cpus", "1"]
        self.api = start_aiaa(tmp / "api", *flags)

    def stop(self) -> None:
        self.api.stop()
        self.ray.shutdown()
        self.redis.stop()


def upload(server: Server, path: Path) -> str:
    reply = requests.put(f"{server.url}/session/", files={"image": (path.name, path.read_bytes())}, timeout=600)
    reply.raise_for_status()
    return reply.json()["session_id"]


def click(server: Server, session_id: str, clicks: dict) -> tuple[float, dict]:
    """Client round trip (s) and the reply's params (latencies), output=json: no mask transfer to time."""
    started = time.perf_counter()
    reply = requests.post(
        f"{server.url}/v1/deepgrow",
        params={"model": MODEL, "session_id": session_id, "output": "json"},
        data={"params": json.dumps(clicks)},
        timeout=600,
    )
    elapsed = time.perf_counter() - started
    reply.raise_for_status()
    return elapsed, reply.json()


def added_latency(embedded: Server, cluster: Server, path: Path, clicks: dict, count: int) -> dict:
    sessions = {"embedded": upload(embedded, path), "cluster": upload(cluster, path)}
    servers = {"embedded": embedded, "cluster": cluster}
    for name in servers:  # the first click deploys / builds the cache: not timed
        click(servers[name], sessions[name], clicks)
    times: dict[str, list[float]] = {"embedded": [], "cluster": []}
    remote: list[float] = []
    for _ in range(count):
        for name in ("embedded", "cluster"):
            elapsed, result = click(servers[name], sessions[name], clicks)
            times[name].append(elapsed)
            if name == "cluster":
                remote.append(result["latencies"]["remote"])
    p50 = {name: statistics.median(values) * 1000 for name, values in times.items()}
    return {
        "embedded_ms": p50["embedded"],
        "cluster_ms": p50["cluster"],
        "added_ms": p50["cluster"] - p50["embedded"],
        "remote_ms": statistics.median(remote) * 1000,
        "remote_p95_ms": sorted(remote)[int(0.95 * (len(remote) - 1))] * 1000,
    }


def throughput(server: Server, path: Path, clicks: dict, clients: int, per_client: int) -> dict:
    sessions = [upload(server, path) for _ in range(clients)]
    for session_id in sessions:
        click(server, session_id, clicks)  # each session's first click (volume fetch, prepare) not timed
    errors: list[str] = []
    latencies: list[float] = []

    def client(session_id: str) -> None:
        for _ in range(per_client):
            try:
                latencies.append(click(server, session_id, clicks)[0])
            except requests.RequestException as error:
                errors.append(str(error)[:200])

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(s,)) for s in sessions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    return {
        "clicks": len(latencies),
        "errors": len(errors),
        "per_s": len(latencies) / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p95_ms": sorted(latencies)[int(0.95 * (len(latencies) - 1))] * 1000,
    }


def report(args, latency: dict, scaling: dict, wall_s: float) -> str:
    size = "×".join(map(str, args.size))
    lines = [
        "# Cluster mode: added latency per click and throughput (issue 15)",
        "",
        f"Measured {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC on {platform.node()} "
        f"({os.cpu_count()} cores, shared with other work), {wall_s:.0f} s in all:",
        "",
        f"    {shlex.join(['.venv/bin/python', 'bench/cluster.py', *sys.argv[1:]])}",
        "",
        f"Phantom {size} (int16), model `{MODEL}`, one foreground click, `output=json` (no mask file), "
        f"--inference-threads {args.threads} everywhere. Redis, Ray (head without CPUs + worker nodes from "
        "`ray.cluster_utils.Cluster`, all on 127.0.0.1) and the API processes on this one machine.",
        "",
        "## Added latency per click (p50 of client round trips, embedded and cluster clicks alternating)",
        "",
        "| | p50 ms |",
        "|---|---:|",
        f"| embedded (`aiaa serve`) | {latency['embedded_ms']:.1f} |",
        f"| cluster (`aiaa serve --redis --ray`, 1 worker node) | {latency['cluster_ms']:.1f} |",
        f"| **added per click** (goal ≤ {GOAL_MS:.0f} ms) | **{latency['added_ms']:.1f}** |",
        f"| backend's own figure: round trip to the replica beyond its work (`latencies.remote`), p50 / p95 | "
        f"{latency['remote_ms']:.1f} / {latency['remote_p95_ms']:.1f} |",
        "",
        "The round-trip difference mixes two effects: the handle call's cost (the backend's own figure, the",
        "round trip to the replica minus the replica's time: Ray's transport, pickling the points and the",
        "packed mask) and the click itself running in another process (the replica does not share a GIL with",
        "the HTTP side, so it can even be faster than in the embedded server). The cluster's cost per click is",
        "the `latencies.remote` line.",
        "",
        f"## Throughput: {args.clients} clients, {args.per_client} clicks each, own sessions",
        "",
        "| setup | replicas | clicks/s | p50 ms | p95 ms | errors |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, row in scaling.items():
        lines.append(
            f"| {name} | {row['replicas']} | {row['per_s']:.2f} | {row['p50_ms']:.0f} | {row['p95_ms']:.0f} | "
            f"{row['errors']} |"
        )
    lines += [
        "",
        "On this 2-core machine every worker node, the API and Redis share the same two cores, so a second",
        "worker node adds no compute: the figures show that the cluster serves correctly with the load spread",
        "over two replicas on two nodes, not how it scales. On real nodes (each with its own cores or GPU)",
        "throughput grows with the replicas, and the added latency per click stays the handle call's.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, nargs=3, default=[512, 512, 100])
    parser.add_argument("--clicks", type=int, default=20, help="timed clicks per server for the added latency")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--per-client", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1, help="--inference-threads of every server")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "cluster.md")
    args = parser.parse_args()
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="aiaa-bench-cluster-"))
    spacing = [384.0 / args.size[0], 384.0 / args.size[1], 250.0 / args.size[2]]
    phantom = make_phantom(15, size=tuple(args.size), spacing=tuple(spacing))
    path, _ = write_phantom(phantom, tmp, stem="ct")
    clicks = {"foreground": [centre_click(to_array(phantom.label) == LABELS["spleen"])], "background": []}
    embedded = start_aiaa(tmp / "embedded", "--models", MODEL, "--inference-threads", str(args.threads))
    scaling: dict[str, dict] = {}
    try:
        scaling["embedded (in-process)"] = {
            "replicas": "–",
            **throughput(embedded, path, clicks, args.clients, args.per_client),
        }
        for workers in (1, 2):
            setup = Setup(tmp / f"workers{workers}", workers, args.threads)
            try:
                if workers == 1:
                    latency = added_latency(embedded, setup.api, path, clicks, args.clicks)
                    print("latency", json.dumps(latency), flush=True)
                row = throughput(setup.api, path, clicks, args.clients, args.per_client)
                scaling[f"cluster, {workers} worker node{'s' if workers > 1 else ''}"] = {"replicas": workers, **row}
                print(workers, "worker node(s)", json.dumps(row), flush=True)
            finally:
                setup.stop()
    finally:
        embedded.stop()
    args.out.write_text(report(args, latency, scaling, time.monotonic() - started), encoding="utf-8")
    print(f"wrote {args.out}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
