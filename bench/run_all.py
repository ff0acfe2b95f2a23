"""Every speed figure of issue 8 in one run, against real server processes on a CT-sized phantom.

    .venv/bin/python bench/run_all.py [--size 512 512 100] [--clicks 20] [--clients 8] [--no-stock]

Starts `aiaa serve` (and, side by side, stock `monailabel start_server` with the same app) on loopback,
times what a clinician feels (client round trips) and what the server reports (`latencies`), and
rewrites bench/results/speed.md (or --out) with the date, the machine and the command.

(A little over 400 lines on purpose: every speed figure the README quotes is measured in this one run, so
the figures share one machine state; each scenario is its own function.)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests
import SimpleITK as sitk
from requests_toolbelt.multipart.decoder import MultipartDecoder

REPO = Path(__file__).resolve().parents[1]

from engines import engines_table, measure_engines  # noqa: E402
from processes import Server, start_aiaa, start_monailabel  # noqa: E402

from aiaa_core.evaluation import extreme_points  # noqa: E402
from aiaa_core.phantoms import LABELS, make_phantom  # noqa: E402
from aiaa_core.vocabularies import ENGINES, EngineName  # noqa: E402
from aiaa_core.volumes import to_array  # noqa: E402

FIELD_OF_VIEW_MM = (384.0, 384.0, 250.0)  # an abdominal CT: 512×512 at 0.75 mm, 100 slices of 2.5 mm


# ------------------------------------------------------------------------------------------- helpers


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def machine() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in lines if "model name" in line), platform.processor())
    ram_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if "MemTotal" in line)
    return f"{os.cpu_count()} CPUs (`nproc`: {len(os.sched_getaffinity(0))}), {cpu}, {ram_kb / 2**20:.0f} GiB RAM"


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def run_header(script: str, argv: list[str] | None, **extra: str) -> dict[str, str]:
    """What a benchmark report's header says of its run: date, machine, load at the start, the command line."""
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "load_start": load(),
        "command": shlex.join(["python", f"bench/{script}", *(sys.argv[1:] if argv is None else argv)]),
        **extra,
    }


class Client:
    """The AIAA calls the benchmark makes, on one keep-alive connection."""

    def __init__(self, url: str):
        self.url, self.http = url, requests.Session()

    def upload(self, path: Path) -> tuple[str, float]:
        started = time.perf_counter()
        with open(path, "rb") as f:
            reply = self.http.put(f"{self.url}/session/", files={"datapoint": (path.name, f)}, timeout=300)
        seconds = time.perf_counter() - started
        reply.raise_for_status()
        return reply.json()["session_id"], seconds

    def infer(self, op: str, model: str, params: dict, session: str | None = None, image: Path | None = None):
        """(round-trip seconds, server-side seconds from `latencies`, status)."""
        query = {"model": model, **({"session_id": session} if session else {})}
        files = {"datapoint": (image.name, image.read_bytes())} if image else None
        started = time.perf_counter()
        reply = self.http.post(
            f"{self.url}/v1/{op}", params=query, data={"params": json.dumps(params)}, files=files, timeout=600
        )
        seconds = time.perf_counter() - started
        if reply.status_code != 200:
            return seconds, float("nan"), reply.status_code
        result = json.loads(MultipartDecoder(reply.content, reply.headers["Content-Type"]).parts[0].content)
        server_side = sum(v for v in result.get("latencies", {}).values() if isinstance(v, int | float))
        return seconds, server_side, 200


def click_sets(truth: np.ndarray, count: int, seed: int = 0) -> list[dict]:
    """Clicks a user could make: 1–3 foreground points inside the object, sometimes a background point."""
    rng = np.random.default_rng(seed)
    inside = np.argwhere(truth)
    sets = []
    for n in range(count):
        foreground = inside[rng.choice(len(inside), size=1 + n % 3)].tolist()
        background = []
        while len(background) < n % 2:  # a voxel outside the object (drawn, not listed: the client stays light)
            point = [int(rng.integers(s)) for s in truth.shape]
            if not truth[tuple(point)]:
                background.append(point)
        sets.append({"foreground": foreground, "background": background})
    return sets


def summary(seconds: list[float]) -> dict:
    return {"p50": percentile(seconds, 50), "p95": percentile(seconds, 95), "n": len(seconds)}


# ---------------------------------------------------------------------------------------- the phases


def measure_ours(server: Server, image: Path, truth: np.ndarray, args) -> dict:
    client = Client(server.url)
    r: dict = {"rss_start": server.memory_mb()}

    times = []
    for _ in range(args.trivial):
        started = time.perf_counter()
        client.http.get(f"{server.url}/v1/models", timeout=30).raise_for_status()
        times.append(time.perf_counter() - started)
    r["overhead"] = summary(times)

    uploads = [client.upload(image) for _ in range(3)]
    session = uploads[-1][0]
    r["upload"] = summary([s for _, s in uploads])

    clicks = click_sets(truth, args.clicks + 1)
    first = client.infer("deepgrow", "deepgrow_3d", clicks[0], session)
    r["first_click"] = first[0]
    runs = [client.infer("deepgrow", "deepgrow_3d", c, session) for c in clicks[1:]]
    r["click"] = summary([t for t, _, _ in runs])
    r["click_server"] = summary([s for _, s, _ in runs])
    r["click_errors"] = sum(status != 200 for _, _, status in runs)

    points = extreme_points(truth)
    runs = [client.infer("dextr3d", "extreme_points", {"points": points}, session) for _ in range(args.extreme)]
    r["extreme"] = summary([t for t, _, _ in runs])
    r["extreme_server"] = summary([s for _, s, _ in runs])

    segmentation = Client(server.url)
    seg_session, _ = segmentation.upload(image)
    runs = [segmentation.infer("segmentation", "segmentation_spleen", {}, seg_session) for _ in range(3)]
    r["segmentation_first"] = runs[0][0]
    r["segmentation"] = summary([t for t, _, _ in runs[1:]])
    r["segmentation_upload"] = segmentation.infer("segmentation", "segmentation_spleen", {}, image=image)[0]
    r["rss_single"] = server.memory_mb()

    # Clicks while full segmentations run back to back on another session.
    stop, during, segs = threading.Event(), [], []

    def segment_until_stopped() -> None:
        while not stop.is_set():
            segs.append(segmentation.infer("segmentation", "segmentation_spleen", {}, seg_session))

    background = threading.Thread(target=segment_until_stopped)
    background.start()
    time.sleep(0.3)  # let the first segmentation reach the server before the first click
    for c in clicks[1:]:
        during.append(client.infer("deepgrow", "deepgrow_3d", c, session))
    stop.set()
    background.join()
    r["click_during_segmentation"] = summary([t for t, _, _ in during])
    r["segmentations_during"] = len(segs)
    r["segmentation_errors"] = sum(status != 200 for _, _, status in segs)

    r["concurrent"] = measure_concurrent(server, image, truth, args)
    r["rss_end"] = server.memory_mb()
    return r


def measure_concurrent(server: Server, image: Path, truth: np.ndarray, args) -> dict:
    """`clients` users, each with a session of their own: clicking back to back (a stress test), then taking
    `think` seconds to look at each result before the next click (a session as a clinician works it)."""
    clients = [Client(server.url) for _ in range(args.clients)]
    sessions = [c.upload(image)[0] for c in clients]
    for c, s in zip(clients, sessions, strict=True):  # each session's first click (conversion) out of the way
        c.infer("deepgrow", "deepgrow_3d", click_sets(truth, 1)[0], s)
    sets = [click_sets(truth, args.concurrent_clicks, seed=index + 1) for index in range(len(clients))]

    def burst(think_s: float) -> dict:
        barrier = threading.Barrier(len(clients))
        pause = threading.Event()  # never set: waiting on it is the think time

        def user(index: int) -> list[tuple]:
            barrier.wait()
            runs = []
            for c in sets[index]:
                runs.append(clients[index].infer("deepgrow", "deepgrow_3d", c, sessions[index]))
                pause.wait(think_s)
            return runs

        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(len(clients)) as pool:
            runs = [run for user_runs in pool.map(user, range(len(clients))) for run in user_runs]
        elapsed = time.perf_counter() - started
        ok = [t for t, _, status in runs if status == 200]
        return {
            **summary(ok),
            "errors": len(runs) - len(ok),
            "statuses": sorted({status for _, _, status in runs}),
            "throughput": len(ok) / elapsed,
        }

    return {"stress": burst(0.0), "thinking": burst(args.think)}


def measure_stock(studies: Path, truth: np.ndarray, args) -> dict:
    server = start_monailabel(studies, "--conf", "engine", args.stock_engine)
    try:
        http, times = requests.Session(), []
        for c in click_sets(truth, args.stock_clicks + 1):
            started = time.perf_counter()
            reply = http.post(
                f"{server.url}/infer/deepgrow_3d",
                params={"image": "ct", "output": "image"},
                data={"params": json.dumps(c)},
                timeout=600,
            )
            reply.raise_for_status()
            times.append(time.perf_counter() - started)
        started = time.perf_counter()
        http.post(
            f"{server.url}/infer/segmentation_spleen",
            params={"image": "ct", "output": "image"},
            data={"params": "{}"},
            timeout=600,
        ).raise_for_status()
        return {"first_click": times[0], "click": summary(times[1:]), "segmentation": time.perf_counter() - started}
    finally:
        server.stop()


# ------------------------------------------------------------------------------------------- report


def verdict(value: float, limit: float) -> str:
    return "✅" if value <= limit else "❌"


def report(r: dict, stock: dict | None, engines: str, args, header: dict) -> str:
    mb = f"{args.image_mb:.0f} MB"
    rows = [
        ("Session upload (PUT /session/, " + mb + " .nii), median of 3", r["upload"]["p50"], 1.0, "s"),
        ("Server overhead (GET /v1/models round trip, p50)", r["overhead"]["p50"] * 1000, 10.0, "ms"),
        (f"DeepGrow click round trip p50 ({r['click']['n']} clicks, session reused)", r["click"]["p50"], 0.25, "s"),
        ("DeepGrow click round trip p95", r["click"]["p95"], 0.5, "s"),
        ("DeepGrow click server-side p50 (sum of `latencies`)", r["click_server"]["p50"], 0.2, "s"),
        ("Extreme points round trip p50", r["extreme"]["p50"], 0.4, "s"),
        ("Full segmentation on a session (repeat), median", r["segmentation"]["p50"], 3.0, "s"),
        ("Full segmentation on a session, first (pre-processing cached after)", r["segmentation_first"], 3.0, "s"),
        ("RSS with the three models loaded (idle, after start)", r["rss_start"]["rss"], 1536, "MiB"),
        ("RSS after the single-user phase (two sessions of this CT cached)", r["rss_single"]["rss"], 1536, "MiB"),
    ]
    conc, stress = r["concurrent"]["thinking"], r["concurrent"]["stress"]
    rows += [
        (f"{args.clients} concurrent clickers, {args.think:g} s between clicks, p95 (limit: 4 × single p50)",
         conc["p95"], 4 * r["click"]["p50"], "s"),
        (f"{args.clients} concurrent clickers back to back (stress), p95 (limit: 4 × single p50)",
         stress["p95"], 4 * r["click"]["p50"], "s"),
        ("Click p95 while segmentations run (limit: 2 × idle p95)", r["click_during_segmentation"]["p95"],
         2 * r["click"]["p95"], "s"),
    ]
    lines = [
        "# Speed benchmark (issue 8)",
        "",
        f"- date: {header['date']}",
        f"- machine: {header['machine']}",
        f"- load average (1, 5, 15 min) at start: {header['load_start']}; at end: {header['load_end']}",
        f"- command: `{header['command']}`",
        f"- phantom: {'×'.join(map(str, args.size))} voxels, spacing {', '.join(f'{s:g}' for s in args.spacing)} mm, "
        f"int16 ({args.image_mb:.0f} MB as .nii)",
        f"- total run time: {header['seconds']:.0f} s",
        "",
        "Noise: the load average above shows what else ran on the machine; on a shared 2-core machine the",
        "figures are worse than on a quiet one.",
        "",
        "## Targets",
        "",
        "| measurement | result | target | met |",
        "|---|---|---|---|",
    ]
    for name, value, limit, unit in rows:
        lines.append(f"| {name} | {value:.3f} {unit} | ≤ {limit:.3g} {unit} | {verdict(value, limit)} |")
    errors = conc["errors"] + stress["errors"]
    statuses = sorted(set(conc["statuses"]) | set(stress["statuses"]))
    lines.append(
        f"| {args.clients} concurrent clickers: errors | {errors} (statuses {statuses}) | 0 | {verdict(errors, 0)} |"
    )
    if stock:
        ratio = stock["click"]["p50"] / r["click"]["p50"]
        lines.append(
            f"| Click p50 ratio, stock MONAI Label ({args.stock_engine}) / ours | {ratio:.1f}× | ≥ 10× | "
            f"{'✅' if ratio >= 10 else '❌'} |"
        )
    lines += [
        "",
        "## Details",
        "",
        "| measurement | p50 | p95 | n |",
        "|---|---|---|---|",
    ]
    for name, key in [
        ("DeepGrow click, round trip (s)", "click"),
        ("DeepGrow click, server-side (s)", "click_server"),
        ("Extreme points, round trip (s)", "extreme"),
        ("Extreme points, server-side (s)", "extreme_server"),
        ("Click while segmentations run, round trip (s)", "click_during_segmentation"),
        ("Session upload (s)", "upload"),
        ("GET /v1/models (s)", "overhead"),
    ]:
        s = r[key]
        lines.append(f"| {name} | {s['p50']:.3f} | {s['p95']:.3f} | {s['n']} |")
    for name, s in ((f"{args.think:g} s between clicks", conc), ("back to back", stress)):
        label = f"{args.clients} concurrent clickers, {name}, round trip (s)"
        lines.append(f"| {label} | {s['p50']:.3f} | {s['p95']:.3f} | {s['n']} |")
    lines += [
        "",
        f"- first click on a fresh session (builds the cached MetaTensor): {r['first_click']:.3f} s",
        f"- full segmentation with the image uploaded in the same request (no session): "
        f"{r['segmentation_upload']:.3f} s",
        f"- segmentations completed while clicking: {r['segmentations_during']} "
        f"(errors: {r['segmentation_errors']})",
        f"- {args.clients} concurrent clickers: {conc['throughput']:.1f} clicks/s in total with "
        f"{args.think:g} s between clicks, {stress['throughput']:.1f} clicks/s back to back",
        f"- memory (MiB): after start {r['rss_start']['rss']:.0f}; after the single-user phase "
        f"{r['rss_single']['rss']:.0f}; at the end {r['rss_end']['rss']:.0f} ({args.clients + 5} sessions); "
        f"peak {r['rss_end']['peak']:.0f}",
    ]
    if stock:
        lines += [
            "",
            "## Stock MONAI Label, same app, same machine, same run",
            "",
            f"`monailabel start_server --app apps/spleen --studies DIR --conf engine {args.stock_engine}`: the same",
            "tasks and weights, run the way MONAI Label runs them (it reads the image from its datastore and",
            "writes the mask with its own writer on every request).",
            "",
            "| measurement | stock MONAI Label | ours | ratio |",
            "|---|---|---|---|",
            f"| DeepGrow click p50 (s) | {stock['click']['p50']:.3f} | {r['click']['p50']:.3f} | "
            f"{stock['click']['p50'] / r['click']['p50']:.1f}× |",
            f"| first click (s) | {stock['first_click']:.3f} | {r['first_click']:.3f} | "
            f"{stock['first_click'] / r['first_click']:.1f}× |",
            f"| full segmentation (s) | {stock['segmentation']:.3f} | {r['segmentation_upload']:.3f} (uploaded) | "
            f"{stock['segmentation'] / r['segmentation_upload']:.1f}× |",
        ]
    lines += ["", "## Engines", "", engines, ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=3, default=(512, 512, 100))
    parser.add_argument("--clicks", type=int, default=20, help="single-user deepgrow clicks")
    parser.add_argument("--extreme", type=int, default=10, help="extreme-point requests")
    parser.add_argument("--trivial", type=int, default=50, help="GET /v1/models requests")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clicking users")
    parser.add_argument("--concurrent-clicks", type=int, default=8, help="clicks per concurrent user")
    parser.add_argument("--think", type=float, default=1.0, help="seconds a concurrent user looks before clicking")
    parser.add_argument("--stock-clicks", type=int, default=5, help="clicks on stock MONAI Label (after one warm-up)")
    parser.add_argument("--no-stock", action="store_true", help="skip stock MONAI Label")
    parser.add_argument(
        "--stock-engine",
        default=EngineName.TORCH,
        choices=ENGINES,
        help="engine of the app's tasks under stock MONAI Label (torch: MONAI Label's own way, eager PyTorch)",
    )
    parser.add_argument("--engine-repeats", type=int, default=5, help="0: skip the engine comparison")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "speed.md")
    args = parser.parse_args(argv)
    args.spacing = tuple(round(fov / n, 4) for fov, n in zip(FIELD_OF_VIEW_MM, args.size, strict=True))
    return args


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    started = time.perf_counter()
    header = run_header("run_all.py", argv)
    with tempfile.TemporaryDirectory(prefix="aiaa-bench-") as tmp:
        tmp = Path(tmp)
        phantom = make_phantom(4242, size=tuple(args.size), spacing=args.spacing, orientation="LPS")
        truth = to_array(phantom.label) == LABELS["spleen"]
        image = tmp / "ct.nii"
        sitk.WriteImage(phantom.image, str(image))
        args.image_mb = image.stat().st_size / 1e6
        studies = tmp / "studies"
        studies.mkdir()
        sitk.WriteImage(phantom.image, str(studies / "ct.nii.gz"))

        engines = engines_table(measure_engines(args.engine_repeats)) if args.engine_repeats else "(not measured)"
        server = start_aiaa(tmp / "aiaa")
        try:
            ours = measure_ours(server, image, truth, args)
        finally:
            server.stop()
        stock = None if args.no_stock else measure_stock(studies, truth, args)
    header["load_end"] = load()
    header["seconds"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report(ours, stock, engines, args, header), encoding="utf-8")
    print(args.out.read_text(encoding="utf-8"))
    return args.out


if __name__ == "__main__":
    main()
