"""Soak: several clinicians work a real server for minutes; does its memory come back when they stop?

    .venv/bin/python bench/soak.py [--minutes 5] [--clinicians 4] [--idle 60] [--replace-every 180]
                                   [--out bench/results/soak.md]

Starts `aiaa serve` on loopback. Each simulated clinician, until the time is up: uploads a CT phantom
(sizes vary, so the crops and patches do), clicks DeepGrow points with a think time between clicks,
sometimes asks for extreme points or a full segmentation, and deletes the session. Meanwhile an admin
replaces one of the app's models every `--replace-every` seconds (`PUT /admin/model/<name>` with the
model's own `aiaa export` archive, as issue 12's soak did), so retired versions must be freed too. The
server's RSS is sampled all along, then through an idle phase with no session left. Writes a Markdown
report (date, machine, command, RSS table, growth per hour, click latency, replacements, errors).

`--server-root DIR` runs the server of another checkout (e.g. `git archive` of an older commit) with
the same load, for a before/after comparison.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import secrets
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]

import processes  # noqa: E402
from run_all import Client, click_sets, load, percentile, run_header  # noqa: E402

from aiaa_core.evaluation import extreme_points  # noqa: E402
from aiaa_core.phantoms import LABELS, make_phantom  # noqa: E402
from aiaa_core.volumes import to_array  # noqa: E402

SIZES = ((192, 192, 64), (256, 256, 80), (224, 224, 96))  # voxels; field of view as an abdominal CT
FIELD_OF_VIEW_MM = (384.0, 384.0, 250.0)
TREND_MIN_S = 15 * 60


@dataclass
class Tally:
    """What the clinicians did, shared between their threads."""

    clicks: list[tuple[float, float]] = field(default_factory=list)  # (time since start, round trip s)
    statuses: dict[int, int] = field(default_factory=dict)
    sessions: int = 0
    replacements: list[tuple[float, float, int]] = field(default_factory=list)  # (time since start, s, status)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, status: int, click_at: float | None = None, seconds: float | None = None) -> None:
        with self.lock:
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if click_at is not None and status == 200:
                self.clicks.append((click_at, seconds))


def phantoms(tmp: Path) -> list[tuple[Path, np.ndarray]]:
    cases = []
    for index, size in enumerate(SIZES):
        spacing = tuple(round(fov / n, 4) for fov, n in zip(FIELD_OF_VIEW_MM, size, strict=True))
        phantom = make_phantom(7000 + index, size=size, spacing=spacing, orientation="LPS")
        path = tmp / f"ct{index}.nii"
        sitk.WriteImage(phantom.image, str(path))
        cases.append((path, to_array(phantom.label) == LABELS["spleen"]))
    return cases


def clinician(index: int, url: str, cases, args, started: float, deadline: float, tally: Tally) -> None:
    """Sessions one after another until the deadline: upload, clicks with a think time, maybe more, delete."""
    client = Client(url)
    pause = threading.Event()  # never set: waiting on it is the think time
    rng = np.random.default_rng(index)
    round_ = 0
    while time.monotonic() < deadline:
        image, truth = cases[(index + round_) % len(cases)]
        try:
            session, _ = client.upload(image)
        except Exception:  # a refused upload counts as an error and the clinician tries again
            tally.record(0)
            pause.wait(args.think)
            continue
        tally.record(200)
        with tally.lock:
            tally.sessions += 1
        for clicks in click_sets(truth, args.clicks, seed=int(rng.integers(1 << 30))):
            if time.monotonic() >= deadline:
                break
            at = time.monotonic() - started
            seconds, _, status = client.infer("deepgrow", "deepgrow_3d", clicks, session)
            tally.record(status, at, seconds)
            pause.wait(args.think)
        if round_ % 3 == 1:
            tally.record(client.infer("dextr3d", "extreme_points", {"points": extreme_points(truth)}, session)[2])
        if round_ % 4 == 2:
            tally.record(client.infer("segmentation", "segmentation_spleen", {}, session)[2])
        tally.record(client.http.delete(f"{url}/session/{session}", timeout=60).status_code)
        round_ += 1


def replacer(url: str, archive: Path, args, started: float, deadline: float, tally: Tally) -> None:
    """An admin re-uploads `archive` as `args.replace_model` every `args.replace_every` s until the deadline."""
    auth = (os.environ["AIAA_ADMIN_USER"], os.environ["AIAA_ADMIN_PASSWORD"])
    pause = threading.Event()  # never set: waiting on it is the interval
    due = started + args.replace_every
    while due < deadline:
        pause.wait(max(0.0, due - time.monotonic()))
        due += args.replace_every
        at = time.monotonic() - started
        try:
            with open(archive, "rb") as f:
                reply = requests.put(
                    f"{url}/admin/model/{args.replace_model}", files={"data": (archive.name, f)}, auth=auth, timeout=600
                )
            status = reply.status_code
        except requests.RequestException:
            status = 0
        with tally.lock:
            tally.replacements.append((at, time.monotonic() - started - at, status))


def exported_archive(name: str, out_dir: Path) -> Path:
    """The app model `name` as the MMAR zip `aiaa export` writes (config + TorchScript)."""
    from server.app_loader import import_app_module

    app_dir = REPO / "apps" / "spleen"
    return import_app_module(app_dir, "lib.export").export_model(app_dir, name, "mmar", out_dir)


def soak(args) -> dict:
    with tempfile.TemporaryDirectory(prefix="aiaa-soak-") as tmp:
        tmp = Path(tmp)
        cases = phantoms(tmp)
        archive = exported_archive(args.replace_model, tmp / "export") if args.replace_every > 0 else None
        if args.server_root:
            processes.REPO = args.server_root.resolve()  # start() runs `python -m server.cli` from there
        os.environ.setdefault("AIAA_ADMIN_USER", "soak-admin")  # the server inherits them; the replacer uses them
        os.environ.setdefault("AIAA_ADMIN_PASSWORD", secrets.token_hex(16))
        server = processes.start_aiaa(tmp / "aiaa")
        samples: list[tuple[float, float, str]] = []  # (seconds, RSS MiB, phase)
        tally = Tally()
        try:
            started = time.monotonic()
            samples.append((0.0, server.memory_mb()["rss"], "idle, models loaded"))
            deadline = started + args.minutes * 60
            stop = threading.Event()

            def sample(phase: str) -> None:
                samples.append((time.monotonic() - started, server.memory_mb()["rss"], phase))

            def sampler() -> None:
                while not stop.wait(args.sample):
                    sample("load" if time.monotonic() < deadline else "idle")

            watcher = threading.Thread(target=sampler, daemon=True)
            watcher.start()
            with concurrent.futures.ThreadPoolExecutor(args.clinicians + 1) as pool:
                users = [
                    pool.submit(clinician, i, server.url, cases, args, started, deadline, tally)
                    for i in range(args.clinicians)
                ]
                if archive is not None:
                    users.append(pool.submit(replacer, server.url, archive, args, started, deadline, tally))
                for user in users:
                    user.result()
            load_ended = time.monotonic() - started
            stop.wait(args.idle)  # no session left: the idle phase
            stop.set()
            watcher.join()
            sample("idle, end")
            peak = server.memory_mb()["peak"]
        finally:
            server.stop()
    return {"samples": samples, "tally": tally, "load_ended": load_ended, "peak": peak}


def growth_mb_per_hour(samples: list[tuple[float, float, str]]) -> float:
    """Slope of a line fitted to the RSS of the second half of the load (the first half warms up)."""
    load_samples = [(t, rss) for t, rss, phase in samples if phase == "load"]
    half = load_samples[len(load_samples) // 2 :]
    if len(half) < 2:
        return float("nan")
    t, rss = np.array(half).T
    return float(np.polyfit(t, rss, 1)[0] * 3600)


def trend(samples: list[tuple[float, float, str]], load_s: float) -> str:
    """MiB/h, only from a load of TREND_MIN_S or more: over minutes, RSS swings by more than it drifts."""
    if load_s < TREND_MIN_S:
        return f"n/a (needs a load of {TREND_MIN_S / 60:.0f} min or more)"
    return f"{growth_mb_per_hour(samples):+.0f} MiB/h"


def report(result: dict, args, header: dict) -> str:
    samples, tally = result["samples"], result["tally"]
    start_rss = samples[0][1]
    load_rss = [rss for _, rss, phase in samples if phase == "load"]
    end_rss = samples[-1][1]
    clicks = [s for _, s in tally.clicks]
    errors = sum(n for status, n in tally.statuses.items() if status != 200)
    replaced = [seconds for _, seconds, status in tally.replacements if status == 200]
    replacements = (
        f"{len(replaced)} of {len(tally.replacements)} answered 200 (statuses "
        f"{dict(sorted(Counter(s for *_, s in tally.replacements).items()))}); "
        f"p50 {percentile(replaced, 50):.1f} s, max {max(replaced, default=float('nan')):.1f} s"
        if args.replace_every > 0
        else "none (`--replace-every 0`)"
    )
    lines = [
        "# Soak benchmark (issue 12: memory that returns)",
        "",
        f"- date: {header['date']}",
        f"- machine: {header['machine']}",
        f"- load average (1, 5, 15 min) at start: {header['load_start']}; at end: {header['load_end']}",
        f"- command: `{header['command']}`",
        f"- server: {'`' + str(args.server_root) + '`' if args.server_root else 'this checkout'}",
        f"- load: {args.clinicians} clinicians for {args.minutes:g} min, {args.clicks} clicks per session, "
        f"{args.think:g} s think time; every 3rd session extreme points, every 4th a full segmentation; "
        f"phantoms {', '.join('×'.join(map(str, s)) for s in SIZES)}; "
        + (
            f"'{args.replace_model}' replaced by its exported MMAR every {args.replace_every:g} s; "
            if args.replace_every > 0
            else ""
        )
        + f"then {args.idle:g} s idle",
        "",
        "## Summary",
        "",
        "| measurement | value |",
        "|---|---|",
        f"| sessions created and deleted | {tally.sessions} |",
        f"| DeepGrow clicks answered | {len(clicks)} |",
        f"| click round trip p50 / p95 | {percentile(clicks, 50):.3f} s / {percentile(clicks, 95):.3f} s |",
        f"| requests not answered 200 | {errors} (statuses {dict(sorted(tally.statuses.items()))}) |",
        f"| model replacements (`PUT /admin/model/{args.replace_model}`) | {replacements} |",
        f"| RSS idle after start (models loaded) | {start_rss:.0f} MiB |",
        f"| RSS highest sample under load / process peak (VmHWM) | {max(load_rss, default=float('nan')):.0f} MiB"
        f" / {result['peak']:.0f} MiB |",
        f"| RSS after {args.idle:g} s idle, no session left | {end_rss:.0f} MiB ({end_rss - start_rss:+.0f} MiB) |",
        f"| RSS trend under load (line fitted to its second half) | {trend(samples, result['load_ended'])} |",
        "",
        "## RSS over time",
        "",
        "| t (s) | RSS (MiB) | phase | clicks so far | replacements so far |",
        "|---:|---:|---|---:|---:|",
    ]
    for t, rss, phase in samples:
        done = sum(1 for at, _ in tally.clicks if at <= t)
        swapped = sum(1 for at, seconds, status in tally.replacements if status == 200 and at + seconds <= t)
        lines.append(f"| {t:.0f} | {rss:.0f} | {phase} | {done} | {swapped} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=5.0, help="duration of the load")
    parser.add_argument("--clinicians", type=int, default=4, help="simulated users working at once")
    parser.add_argument("--clicks", type=int, default=8, help="DeepGrow clicks per session")
    parser.add_argument("--think", type=float, default=1.0, help="seconds between a user's clicks")
    parser.add_argument("--idle", type=float, default=60.0, help="seconds sampled after the load, no session left")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between RSS samples")
    parser.add_argument(
        "--replace-every", type=float, default=180.0, help="seconds between model replacements (0: none)"
    )
    parser.add_argument(
        "--replace-model", default="segmentation_spleen", help="the app model re-uploaded from its own export"
    )
    parser.add_argument("--server-root", type=Path, help="run the server of this checkout instead")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "soak.md")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> Path:
    args = parse_args(argv)
    header = run_header("soak.py", argv)
    result = soak(args)
    header["load_end"] = load()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report(result, args, header), encoding="utf-8")
    print(args.out.read_text(encoding="utf-8"))
    return args.out


if __name__ == "__main__":
    main()
