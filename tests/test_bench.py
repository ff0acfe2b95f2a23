"""The benchmark runs end to end (real server process, tiny phantom, few iterations) and writes its table."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO_ROOT


def test_run_all_writes_every_figure(tmp_path):
    out = tmp_path / "speed.md"
    args = ["--size", "48", "40", "32", "--clicks", "2", "--extreme", "1", "--trivial", "2", "--clients", "2"]
    args += ["--concurrent-clicks", "1", "--think", "0", "--engine-repeats", "0", "--no-stock", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "bench/run_all.py", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text(encoding="utf-8")
    for line in ("- date: ", "- machine: ", "- command: `python bench/run_all.py --size 48 40 32"):
        assert line in text
    targets = text.split("## Targets")[1].split("## Details")[0]
    for name in (
        "Session upload",
        "Server overhead",
        "DeepGrow click round trip p50",
        "DeepGrow click server-side p50",
        "Extreme points round trip p50",
        "Full segmentation on a session",
        "RSS with the three models loaded",
        "2 concurrent clickers, 0 s between clicks, p95",
        "2 concurrent clickers back to back (stress), p95",
        "Click p95 while segmentations run",
    ):
        row = next(line for line in targets.splitlines() if line.startswith(f"| {name}"))
        assert re.search(r"\| \d+\.\d{3} (s|ms|MiB) \| ≤ ", row), row
    assert "| 2 concurrent clickers: errors | 0 (statuses [200])" in targets
