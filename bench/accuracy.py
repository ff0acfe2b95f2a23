"""Accuracy of the three app models, the way the server runs them (same tasks, same I/O).

    .venv/bin/python bench/accuracy.py [--phantoms 6] [--shared-data ../shared/data]

Synthetic test phantoms use seeds 200000.. (training uses 0.., model selection 100000..). The real CTs'
spleen, left kidney, liver and stomach (TotalSegmentator masks) were held out of the click models'
training. Writes bench/results/accuracy.md.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "apps" / "spleen")]

from lib.evaluation import centre_click, dice, extreme_points, next_click  # noqa: E402
from lib.trainers.data import REAL_CASES, REAL_HELD_OUT  # noqa: E402
from server.imageio import read_image, to_array  # noqa: E402
from server.inference import run_model  # noqa: E402
from server.phantoms import LABELS, make_phantom  # noqa: E402
from server.registry import load_app_models  # noqa: E402

MAX_CLICKS = 5
DEEPGROW_TARGET = 0.85


def evaluate(models: dict, image: sitk.Image, truth: np.ndarray, with_segmentation: bool) -> dict:
    row = {}
    if with_segmentation:
        mask, _ = run_model(models["segmentation_spleen"], image, {})
        row["segmentation"] = dice(mask, truth)
    started = time.perf_counter()
    mask, _ = run_model(models["extreme_points"], image, {"points": extreme_points(truth)})
    row["extreme_points"], row["extreme_s"] = dice(mask, truth), time.perf_counter() - started
    clicks, scores = {"foreground": [centre_click(truth)], "background": []}, []
    for _ in range(MAX_CLICKS):
        mask, _ = run_model(models["deepgrow_3d"], image, clicks)
        scores.append(dice(mask, truth))
        if scores[-1] >= DEEPGROW_TARGET:
            break
        kind, point = next_click(mask, truth)
        clicks[kind].append(point)
    row["deepgrow_1"], row["deepgrow"], row["clicks"] = scores[0], scores[-1], len(scores)
    return row


def real_cases(shared: Path):
    for image_name, label_name in REAL_CASES:
        image_path = shared / image_name
        if not image_path.exists():
            continue
        image = read_image(sorted(image_path.iterdir()) if image_path.is_dir() else [image_path])
        labels = sitk.Resample(
            sitk.ReadImage(str(shared / label_name)), image, sitk.Transform(), sitk.sitkNearestNeighbor
        )
        labels = to_array(labels)
        for value, organ in REAL_HELD_OUT.items():
            if (labels == value).sum() > 0:
                yield f"{image_path.name} {organ}", image, labels == value, organ == "spleen"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--phantoms", type=int, default=6)
    parser.add_argument("--shared-data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    models = {m.name: m for m in load_app_models(REPO / "apps" / "spleen")}
    rows = []
    orientations = ("RAS", "LPS", "LAS", "oblique")
    for i in range(args.phantoms):
        spacing = (2.5 + 0.3 * (i % 3), 2.5 + 0.3 * (i % 3), 2.5 + 0.5 * (i % 4))
        size = tuple(int(fov / s) for fov, s in zip((350, 290, 200), spacing, strict=True))
        phantom = make_phantom(200_000 + i, size=size, spacing=spacing, orientation=orientations[i % 4])
        truth = to_array(phantom.label) == LABELS["spleen"]
        rows.append((f"phantom {200_000 + i} ({orientations[i % 4]})", evaluate(models, phantom.image, truth, True)))
        print(rows[-1], flush=True)
    if args.shared_data.is_dir():
        for name, image, truth, is_spleen in real_cases(args.shared_data):
            rows.append((f"real CT {name}", evaluate(models, image, truth, is_spleen)))
            print(rows[-1], flush=True)

    def fmt(row: dict, key: str) -> str:
        return f"{row[key]:.3f}" if key in row else "–"

    lines = [
        "# Model accuracy (Dice)",
        "",
        f"- date: {datetime.date.today()}; machine: {platform.machine()}, {platform.processor() or 'cpu'}, "
        f"{__import__('os').cpu_count()} cores; command: `.venv/bin/python bench/accuracy.py`",
        f"- deepgrow: first click at the centre of the object, then up to {MAX_CLICKS} clicks in total, each at "
        f"the centre of the largest error, stopping at Dice ≥ {DEEPGROW_TARGET}",
        "",
        "| case | segmentation | extreme points | deepgrow 1 click | deepgrow final | clicks |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in rows:
        lines.append(
            f"| {name} | {fmt(row, 'segmentation')} | {fmt(row, 'extreme_points')} | "
            f"{fmt(row, 'deepgrow_1')} | {fmt(row, 'deepgrow')} | {row['clicks']} |"
        )
    phantom_rows = [r for n, r in rows if n.startswith("phantom")]
    if phantom_rows:
        means = {k: np.mean([r[k] for r in phantom_rows]) for k in ("segmentation", "extreme_points", "deepgrow")}
        lines.append(
            f"| **phantom mean** | {means['segmentation']:.3f} | {means['extreme_points']:.3f} | | "
            f"{means['deepgrow']:.3f} | |"
        )
    out = REPO / "bench" / "results" / "accuracy.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
