"""Accuracy of the app's models on real CTs (and phantoms), through the server's own inference path.

    .venv/bin/python bench/accuracy.py [--quick] [--phantoms 6] [--shared-data ../shared/data] [--studies DIR]
        [--weights-dir DIR] [--models NAME ...] [--variants NAME ...] [--json OUT.json] [--compare BASELINE.json]
        [--no-write]

Each real scan of `../shared/data` (two patients: `example_ct`, and the DICOM series) is evaluated as
uploaded (written as NIfTI and decoded by the server's reader) and as robustness variants made from it:
5 mm and 7.5 mm slices, ±80 HU, flipped storage axes (LPS for a RAS file, RAS for the LPS DICOM) and an
oblique grid. Truth: the TotalSegmentator masks of the large organs (spleen, kidneys, liver, stomach,
bladder; ≥ 50 mL in the scan). A simulated user:

- extreme points: the six extreme voxels of the true mask, the central-most of each face;
- deepgrow: one click at the organ's deepest voxel (largest distance to its boundary, in mm), then four
  more, each at the deepest voxel of the larger error region (missed → foreground, leaked → background);
  Dice after every click.

`--quick` evaluates the scans as they are (no variants) and one phantom; `--models segmentation_spleen` (or
any subset) evaluates only those models and `--variants ...` only those variants (also "1 mm slices", thin
re-slicing, outside the recorded set); both print their report without writing it. `--studies DATASTORE`
evaluates the subjects of a datastore written by `aiaa import-totalseg` (many patients, e.g. the
TotalSegmentator dataset's test split) instead of `../shared/data`, and prints only. The one place the
real-CT variants are made: tests/test_segmentation_realct.py imports `real_cases()` and
`evaluate_segmentation()`. Writes bench/results/accuracy.md and .png.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "apps" / "spleen"

from aiaa_core.evaluation import centre_click, dice, extreme_points, next_click  # noqa: E402
from aiaa_core.phantoms import LABELS, make_phantom  # noqa: E402
from aiaa_core.volumes import to_array  # noqa: E402
from server.app_loader import import_app_module  # noqa: E402
from server.image_reading import read_image  # noqa: E402
from server.inference import run_model  # noqa: E402
from server.registry import ServedModel, app_model  # noqa: E402

SHARED_DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "bench" / "results"
CLICKS = 5
# TotalSegmentator "total" class map values of the large organs we score.
LARGE_ORGANS = {1: "spleen", 2: "kidney_right", 3: "kidney_left", 5: "liver", 6: "stomach", 21: "urinary_bladder"}
MIN_ORGAN_ML = 50.0
TARGETS = {"extreme_points": 0.88, "deepgrow_1": 0.80, "deepgrow_5": 0.90, "segmentation": 0.85}


@dataclass(frozen=True)
class RealScan:
    """One patient's CT (a file or a DICOM folder) and its label map; `organs`: the map's values of the large
    organs and their names."""

    patient: str
    image: Path
    labels: Path
    organs: dict[int, str] = field(default_factory=lambda: dict(LARGE_ORGANS))


def shared_scans(shared: Path) -> list[RealScan]:
    """The patients of `../shared/data` that are there. Distinct patients only: example_ct_sm is the top of
    example_ct."""
    scans = (
        RealScan(
            "example_ct", shared / "totalseg/example_ct.nii.gz", shared / "totalseg/example_seg_fast_force_split.nii.gz"
        ),
        RealScan("dicom", shared / "totalseg/example_ct_dicom", shared / "totalseg/example_seg_dicom.nii.gz"),
    )
    return [scan for scan in scans if scan.image.exists()]


def datastore_scans(datastore: Path) -> list[RealScan]:
    """Every labelled subject of a datastore written by `aiaa import-totalseg` (many patients, e.g. the
    TotalSegmentator dataset's test split: `--split test`), its large organs found by structure name."""
    importer = import_app_module(APP, "lib.trainers.totalseg_import")  # its file names and layout
    names = datastore / importer.LABELS_FILE
    if not names.is_file():
        raise SystemExit(f"{names} is missing: write the datastore with `aiaa import-totalseg SOURCE {datastore}`")
    values = json.loads(names.read_text())["labels"]
    organs = {int(values[name]): name for name in LARGE_ORGANS.values() if name in values}
    scans = []
    for label in sorted((datastore / "labels" / "final").glob(f"*{importer.SUFFIX}")):
        image = datastore / label.name
        if image.is_file():
            scans.append(RealScan(label.name.removesuffix(importer.SUFFIX), image, label, organs))
    if not scans:
        raise SystemExit(f"no subject of {datastore} has both an image and labels/final/<subject>")
    return scans


class Variant(StrEnum):
    ORIGINAL = "original"
    SLICES_1MM = "1 mm slices"  # thin re-slicing (interpolated): asked for with --variants, not in the issue's set
    SLICES_5MM = "5 mm slices"
    SLICES_7_5MM = "7.5 mm slices"
    PLUS_80HU = "+80 HU"
    MINUS_80HU = "-80 HU"
    FLIPPED = "flipped axes"
    OBLIQUE = "oblique"


ISSUE_VARIANTS = tuple(v for v in Variant if v is not Variant.SLICES_1MM)  # what bench/results records


@dataclass
class Case:
    """A real CT as a user uploads it (decoded by the server's reader) and its label map on that grid."""

    patient: str
    variant: Variant
    image: sitk.Image
    labels: np.ndarray  # [i, j, k], TotalSegmentator values
    organ_values: dict[int, str] = field(default_factory=lambda: dict(LARGE_ORGANS))

    @property
    def spacing(self) -> tuple[float, ...]:
        return self.image.GetSpacing()

    def organs(self, min_ml: float = MIN_ORGAN_ML) -> dict[str, np.ndarray]:
        """The large organs present with at least `min_ml` in this scan, as boolean masks."""
        voxel_ml = float(np.prod(self.spacing)) / 1000.0
        masks = {name: self.labels == value for value, name in self.organ_values.items()}
        return {name: mask for name, mask in masks.items() if mask.sum() * voxel_ml >= min_ml}


# ------------------------------------------------------------------------------------------ variants


def load_scan(scan: RealScan) -> tuple[sitk.Image, sitk.Image]:
    image = read_image(sorted(scan.image.iterdir()) if scan.image.is_dir() else [scan.image])
    labels = sitk.Resample(sitk.ReadImage(str(scan.labels)), image, sitk.Transform(), sitk.sitkNearestNeighbor)
    return image, labels


def thick_slices(image: sitk.Image, labels: sitk.Image, thickness: float) -> tuple[sitk.Image, sitk.Image]:
    """Resample to `thickness` mm along the slice axis (k), averaging as a thick slice does."""
    spacing = list(image.GetSpacing())
    sigma = max(thickness / 2.355, 1e-3)  # a Gaussian of FWHM = thickness along k only
    smooth = sitk.SmoothingRecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32), [1e-3, 1e-3, sigma])
    size = list(image.GetSize())
    extent = spacing[2] * size[2]
    size[2], spacing[2] = max(1, int(round(extent / thickness))), thickness
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    # Keep the first slice's centre where the volume's first `thickness` mm are centred.
    origin = np.asarray(image.GetOrigin()) + direction[:, 2] * (thickness - image.GetSpacing()[2]) / 2
    grid = sitk.Image(size, sitk.sitkUInt8)
    grid.SetSpacing(spacing)
    grid.SetDirection(image.GetDirection())
    grid.SetOrigin(origin.tolist())
    out = sitk.Cast(sitk.Resample(smooth, grid, sitk.Transform(), sitk.sitkLinear, -1024.0), sitk.sitkInt16)
    return out, sitk.Resample(labels, grid, sitk.Transform(), sitk.sitkNearestNeighbor)


def oblique(image: sitk.Image, labels: sitk.Image) -> tuple[sitk.Image, sitk.Image]:
    """The same voxel size and count on a grid turned 20° about the slice axis and, when the scan is
    deep enough (≥ 100 mm), tilted 10° about i; centred on the volume's centre."""
    size, spacing = np.asarray(image.GetSize()), np.asarray(image.GetSpacing())
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    centre = np.asarray(image.TransformContinuousIndexToPhysicalPoint(((size - 1) / 2).tolist()))
    turn, tilt = math.radians(20), math.radians(10 if size[2] * spacing[2] >= 100 else 0)
    about_k = np.array([[math.cos(turn), -math.sin(turn), 0], [math.sin(turn), math.cos(turn), 0], [0, 0, 1]])
    about_i = np.array([[1, 0, 0], [0, math.cos(tilt), -math.sin(tilt)], [0, math.sin(tilt), math.cos(tilt)]])
    new_direction = direction @ about_k @ about_i
    origin = centre - new_direction @ ((size - 1) / 2 * spacing)
    grid = sitk.Image(size.tolist(), sitk.sitkUInt8)
    grid.SetSpacing(spacing.tolist())
    grid.SetDirection(new_direction.ravel().tolist())
    grid.SetOrigin(origin.tolist())
    out = sitk.Resample(image, grid, sitk.Transform(), sitk.sitkLinear, -1024.0, image.GetPixelID())
    return out, sitk.Resample(labels, grid, sitk.Transform(), sitk.sitkNearestNeighbor)


def make_variant(image: sitk.Image, labels: sitk.Image, variant: Variant) -> tuple[sitk.Image, sitk.Image]:
    """The scan (and its labels) as the variant: another grid, or other intensities on the same grid."""
    if variant == Variant.SLICES_1MM:
        return thick_slices(image, labels, 1.0)
    if variant == Variant.SLICES_5MM:
        return thick_slices(image, labels, 5.0)
    if variant == Variant.SLICES_7_5MM:
        return thick_slices(image, labels, 7.5)
    if variant in (Variant.PLUS_80HU, Variant.MINUS_80HU):
        shift = 80 if variant == Variant.PLUS_80HU else -80
        return sitk.Cast(sitk.Cast(image, sitk.sitkFloat32) + shift, sitk.sitkInt16), labels
    if variant == Variant.FLIPPED:
        code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(image.GetDirection())
        target = "RAS" if code == "LPS" else "LPS"  # DICOM convention: the directions the axes point to
        return sitk.DICOMOrient(image, target), sitk.DICOMOrient(labels, target)
    if variant == Variant.OBLIQUE:
        return oblique(image, labels)
    return image, labels


def as_uploaded(image: sitk.Image, tmp: Path) -> sitk.Image:
    """The image after a round trip through a NIfTI upload and the server's reader."""
    path = tmp / "upload.nii.gz"
    sitk.WriteImage(image, str(path))
    return read_image([path])


def real_cases(
    shared: Path = SHARED_DATA,
    variants: Iterable[Variant] = ISSUE_VARIANTS,
    patients: Iterable[str] | None = None,
    scans: Iterable[RealScan] | None = None,
) -> Iterator[Case]:
    """Every real scan in `shared` (none when absent), or `scans`, as each variant, decoded as the server
    decodes it."""
    wanted = set(patients) if patients else None
    with tempfile.TemporaryDirectory() as tmp:
        for scan in shared_scans(shared) if scans is None else scans:
            if wanted and scan.patient not in wanted:
                continue
            image, labels = load_scan(scan)
            for variant in variants:
                variant_image, variant_labels = make_variant(image, labels, variant)
                upload = as_uploaded(variant_image, Path(tmp))
                yield Case(scan.patient, variant, upload, to_array(variant_labels), scan.organs)


# ---------------------------------------------------------------------------------------- evaluation


def evaluate_segmentation(model: ServedModel, image: sitk.Image, truth: np.ndarray) -> float:
    """Dice of an automatic segmentation (any foreground label) against `truth`."""
    mask, _ = run_model(model, image, {})
    return dice(mask, truth)


def evaluate_extreme_points(model: ServedModel, image: sitk.Image, truth: np.ndarray) -> float:
    mask, _ = run_model(model, image, {"points": extreme_points(truth, central=True)})
    return dice(mask, truth)


def evaluate_deepgrow(
    model: ServedModel, image: sitk.Image, truth: np.ndarray, clicks: int = CLICKS
) -> tuple[list[float], list[float]]:
    """Dice and latency after each of `clicks` simulated clicks (the first at the organ's deepest voxel)."""
    spacing = image.GetSpacing()
    points = {"foreground": [centre_click(truth, spacing)], "background": []}
    scores, seconds = [], []
    for n in range(clicks):
        started = time.perf_counter()
        mask, _ = run_model(model, image, points)
        seconds.append(time.perf_counter() - started)
        scores.append(dice(mask, truth))
        if n + 1 < clicks and scores[-1] < 1.0:
            kind, point = next_click(mask, truth, spacing)
            points[kind].append(point)
    return scores, seconds


@dataclass
class Row:
    """One object of one scan variant: every model's Dice on it."""

    source: str  # patient, or "phantom"
    variant: str
    organ: str
    segmentation: float | None = None
    extreme_points: float | None = None
    deepgrow: list[float] = field(default_factory=list)
    click_seconds: list[float] = field(default_factory=list)
    cut: bool = False  # the organ reaches the scan's edge: part of it lies outside the scan


def reaches_edge(mask: np.ndarray) -> bool:
    """Whether the mask touches a face of its array: the scan holds only part of that organ."""
    return any(np.take(mask, index, axis).any() for axis in range(mask.ndim) for index in (0, -1))


def evaluate_case(models: dict[str, ServedModel], image: sitk.Image, organs: dict[str, np.ndarray], **row) -> list[Row]:
    rows = []
    for organ, truth in organs.items():
        r = Row(organ=organ, cut=reaches_edge(truth), **row)
        if organ == "spleen" and "segmentation_spleen" in models:
            r.segmentation = evaluate_segmentation(models["segmentation_spleen"], image, truth)
        if "extreme_points" in models:
            r.extreme_points = evaluate_extreme_points(models["extreme_points"], image, truth)
        if "deepgrow_3d" in models:
            r.deepgrow, r.click_seconds = evaluate_deepgrow(models["deepgrow_3d"], image, truth)
        if r.segmentation is None and r.extreme_points is None and not r.deepgrow:
            continue  # no model asked for scores this organ
        print(json.dumps({k: v for k, v in asdict(r).items() if k != "click_seconds"}, default=_round), flush=True)
        rows.append(r)
    return rows


def phantom_cases(count: int) -> Iterator[tuple[str, sitk.Image, np.ndarray]]:
    """Held-out phantoms (seeds 200000..; training uses 0.., model selection 100000..) and their spleen."""
    orientations = ("RAS", "LPS", "LAS", "oblique")
    for i in range(count):
        spacing = (2.5 + 0.3 * (i % 3), 2.5 + 0.3 * (i % 3), 2.5 + 0.5 * (i % 4))
        size = tuple(int(fov / s) for fov, s in zip((350, 290, 200), spacing, strict=True))
        phantom = make_phantom(200_000 + i, size=size, spacing=spacing, orientation=orientations[i % 4])
        yield f"{200_000 + i} {orientations[i % 4]}", phantom.image, to_array(phantom.label) == LABELS["spleen"]


MODELS = ("segmentation_spleen", "extreme_points", "deepgrow_3d")


def load_models(weights_dir: Path | None = None, names: Iterable[str] = MODELS) -> dict[str, ServedModel]:
    """The app's models `names`, with the weights of `weights_dir/<name>.pt` where present (else model/)."""
    models = {}
    for name in names:
        weights = APP / "model" / f"{name}.pt"
        if weights_dir and (weights_dir / f"{name}.pt").is_file():
            weights = weights_dir / f"{name}.pt"
        models[name] = app_model(APP, name, weights)
    return models


# ------------------------------------------------------------------------------------------- report


def _round(value):
    return round(value, 4) if isinstance(value, float) else value


def mean(values: Iterable[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def metric(row: Row, key: str) -> float | None:
    if key == "deepgrow_1":
        return row.deepgrow[0] if row.deepgrow else None
    if key == "deepgrow_5":
        return row.deepgrow[-1] if row.deepgrow else None
    return getattr(row, key)


METRICS = {
    "extreme_points": "Extreme points (6 true extreme points)",
    "deepgrow_1": "DeepGrow, 1 click at the organ's deepest voxel",
    "deepgrow_5": f"DeepGrow, after {CLICKS} clicks",
    "segmentation": "segmentation_spleen (automatic)",
}


def fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def summary(rows: list[Row]) -> dict[str, dict[str, float | None]]:
    """Mean of each metric over the real-CT organs, per variant and over all variants ('all')."""
    real = [r for r in rows if r.source != "phantom"]
    variants = sorted({r.variant for r in real}, key=list(Variant).index)
    out = {}
    for key in METRICS:
        out[key] = {v: mean(metric(r, key) for r in real if r.variant == v) for v in variants}
        out[key]["all"] = mean(metric(r, key) for r in real)
    return out


SHARED_TRUTH = (
    "TotalSegmentator masks of the two patients in `../shared/data` (`example_ct`: 3 mm, 122×101×112;"
    " `dicom`: the DICOM series, 0.98×0.98×2 mm, 512×512×20)"
)


def markdown(rows: list[Row], command: str, notes: list[str], baseline: dict | None, truth: str = SHARED_TRUTH) -> str:
    real = [r for r in rows if r.source != "phantom"]
    variants = sorted({r.variant for r in real}, key=list(Variant).index)
    objects = list(dict.fromkeys((r.source, r.organ) for r in real))
    lines = [
        "# Model accuracy (Dice)",
        "",
        f"- date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; machine: {platform.machine()}, "
        f"{os.cpu_count()} cores, CPU only; command: `{command}`",
        f"- truth: {truth}; organs ≥ {MIN_ORGAN_ML:g} mL in the scan",
        "- simulated user: extreme points = the central-most voxel of each of the mask's six extreme faces; "
        f"deepgrow = one click at the organ's deepest voxel, then {CLICKS - 1} clicks each at the deepest voxel"
        " of the larger error region (missed → foreground, leaked → background)",
        *[f"- {note}" for note in notes],
        "",
    ]
    means = summary(rows)
    scored = {key: title for key, title in METRICS.items() if means[key]["all"] is not None}  # models evaluated
    lines += ["## Summary: mean over the real-CT organs", "", "| model | target | " + " | ".join(variants) + " | all |"]
    lines.append("|---|---|" + "---|" * (len(variants) + 1))
    for key, title in scored.items():
        cells = [fmt(means[key].get(v)) for v in [*variants, "all"]]
        lines.append(f"| {title} | ≥ {TARGETS[key]} | " + " | ".join(cells) + " |")
        if baseline and key in baseline:
            cells = [fmt(baseline[key].get(v)) for v in [*variants, "all"]]
            lines.append(f"| *baseline* {title} | | " + " | ".join(cells) + " |")
    for cut, which in ((False, "held whole by the scan"), (True, "cut by the scan's edge")):
        part = [r for r in real if r.cut == cut]
        if part and any(r.cut for r in real):
            names = ", ".join(f"{src} {org}" for src, org in dict.fromkeys((r.source, r.organ) for r in part))
            means_part = ", ".join(f"{key} {fmt(mean(metric(r, key) for r in part))}" for key in scored)
            lines += ["", f"Organs {which} ({len(part)} rows: {names}): {means_part}."]
    for key, title in scored.items():
        lines += ["", f"## {title}", "", "| patient | organ | " + " | ".join(variants) + " |"]
        lines.append("|---|---|" + "---|" * len(variants))
        for source, organ in objects:
            cells = []
            for v in variants:
                match = [r for r in real if (r.source, r.organ, r.variant) == (source, organ, v)]
                cells.append(fmt(metric(match[0], key)) if match else "–")
            if any(c != "–" for c in cells):
                lines.append(f"| {source} | {organ} | " + " | ".join(cells) + " |")
    if any(r.deepgrow for r in real):
        lines += ["", "## DeepGrow Dice after each click (real CT, all variants)", ""]
        lines += ["| patient | organ | variant | " + " | ".join(str(n + 1) for n in range(CLICKS)) + " |"]
        lines.append("|---|---|---|" + "---|" * CLICKS)
        for r in real:
            if r.deepgrow:
                clicks = " | ".join(fmt(d) for d in r.deepgrow)
                lines.append(f"| {r.source} | {r.organ} | {r.variant} | {clicks} |")
    seconds = [s for r in real for s in r.click_seconds]
    if seconds:
        lines += [
            "",
            f"Click latency in-process (run_model, {len(seconds)} clicks, one at a time): "
            f"p50 {np.percentile(seconds, 50):.3f} s, p95 {np.percentile(seconds, 95):.3f} s, "
            f"max {max(seconds):.3f} s.",
        ]
    phantoms = [r for r in rows if r.source == "phantom"]
    if phantoms:
        lines += ["", "## Held-out phantoms (spleen)", ""]
        lines += [
            "| phantom | segmentation | extreme points | deepgrow 1 click | deepgrow 5 clicks |",
            "|---|---|---|---|---|",
        ]
        for r in [*phantoms, None]:
            if r is None:
                cells = [
                    mean(metric(p, k) for p in phantoms)
                    for k in ("segmentation", "extreme_points", "deepgrow_1", "deepgrow_5")
                ]
                lines.append("| **mean** | " + " | ".join(f"**{fmt(c)}**" for c in cells) + " |")
            else:
                cells = [metric(r, k) for k in ("segmentation", "extreme_points", "deepgrow_1", "deepgrow_5")]
                lines.append(f"| {r.variant} | " + " | ".join(fmt(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[Row], path: Path, title: str) -> None:
    """One panel per variant: Dice after each click per organ (lines), extreme points (◆) and
    automatic segmentation (★) beside them, the targets dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    real = [r for r in rows if r.source != "phantom"]
    variants = sorted({r.variant for r in real}, key=list(Variant).index)
    objects = list(dict.fromkeys((r.source, r.organ) for r in real))
    colours = {obj: plt.get_cmap("tab10")(i % 10) for i, obj in enumerate(objects)}
    columns = min(4, len(variants))
    rows_n = math.ceil(len(variants) / columns)
    fig, axes = plt.subplots(rows_n, columns, figsize=(4.2 * columns, 3.6 * rows_n), sharey=True, squeeze=False)
    x_clicks = np.arange(1, CLICKS + 1)
    for ax, variant in zip(axes.ravel(), variants, strict=False):
        for r in (r for r in real if r.variant == variant):
            colour = colours[(r.source, r.organ)]
            if r.deepgrow:
                ax.plot(x_clicks, r.deepgrow, "-o", color=colour, markersize=3, lw=1.2)
            if r.extreme_points is not None:
                ax.plot([CLICKS + 1.2], [r.extreme_points], "D", color=colour, markersize=5)
            if r.segmentation is not None:
                ax.plot([CLICKS + 2.2], [r.segmentation], "*", color=colour, markersize=10)
        m = summary([r for r in real if r.variant == variant])
        dg = [mean(r.deepgrow[n] for r in real if r.variant == variant and len(r.deepgrow) > n) for n in range(CLICKS)]
        ax.plot(x_clicks, dg, "-", color="black", lw=2.5, label="mean")
        ax.axhline(TARGETS["deepgrow_5"], color="grey", ls="--", lw=0.8)
        ax.axhline(TARGETS["deepgrow_1"], color="grey", ls=":", lw=0.8)
        ax.set_title(
            f"{variant}  (EP {fmt(m['extreme_points'][variant])}, 1 click {fmt(m['deepgrow_1'][variant])})", fontsize=9
        )
        ax.set_xticks([*x_clicks, CLICKS + 1.2, CLICKS + 2.2], [*map(str, x_clicks), "EP", "auto"])
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(variants) :]:
        ax.axis("off")
    handles = [plt.Line2D([], [], color=c, marker="o", label=f"{s} {o}") for (s, o), c in colours.items()]
    handles.append(plt.Line2D([], [], color="black", lw=2.5, label="mean deepgrow"))
    fig.legend(handles=handles, loc="lower right", fontsize=8, ncol=2)
    fig.supylabel("Dice")
    fig.supxlabel("deepgrow click number · EP = extreme points · auto = segmentation_spleen")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="scans as they are, no variants; one phantom")
    parser.add_argument("--phantoms", type=int, default=6)
    parser.add_argument("--shared-data", type=Path, default=SHARED_DATA)
    parser.add_argument(
        "--studies", type=Path, help="evaluate the subjects of this datastore (`aiaa import-totalseg`; prints only)"
    )
    parser.add_argument("--patients", nargs="*", help="only these patients (example_ct, dicom; subjects of --studies)")
    parser.add_argument("--weights-dir", type=Path, help="weights <name>.pt to use instead of the app's model/")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="only these (prints only)")
    parser.add_argument(
        "--variants", nargs="+", type=Variant, choices=list(Variant), help="only these (prints only; '1 mm slices' too)"
    )
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--compare", type=Path, help="a JSON of an earlier run: its means go in the summary")
    parser.add_argument("--merge", type=Path, nargs="+", help="report the rows of these --json files; evaluate nothing")
    parser.add_argument("--note", action="append", default=[], help="a line for the report's header")
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results/accuracy.*")
    args = parser.parse_args()
    rows: list[Row] = []
    scans = datastore_scans(args.studies) if args.studies else None
    command = " ".join(["bench/accuracy.py", *sys.argv[1:]])
    if args.merge:
        runs = [json.loads(path.read_text()) for path in args.merge]
        rows = [Row(**r) for run in runs for r in run["rows"]]
        command = "; ".join(f"{run['command']} (rows)" for run in runs)
    else:
        models = load_models(args.weights_dir, args.models)
        variants = (Variant.ORIGINAL,) if args.quick else tuple(args.variants or ISSUE_VARIANTS)
        for name, image, truth in phantom_cases(1 if args.quick else args.phantoms):
            rows += evaluate_case(models, image, {"spleen": truth}, source="phantom", variant=name)
        for case in real_cases(args.shared_data, variants, args.patients, scans):
            rows += evaluate_case(models, case.image, case.organs(), source=case.patient, variant=case.variant)
    if args.json:
        args.json.write_text(json.dumps({"command": command, "rows": [asdict(r) for r in rows]}, default=_round))
    baseline = None
    if args.compare:
        baseline = summary([Row(**r) for r in json.loads(args.compare.read_text())["rows"]])
    truth = SHARED_TRUTH
    if args.studies:
        truth = f"label maps of the datastore `{args.studies}` (`aiaa import-totalseg`), {len(scans)} subjects"
    report = markdown(rows, f".venv/bin/python {command}", args.note, baseline, truth)
    print(report)
    if not args.no_write and set(args.models) == set(MODELS) and not args.variants and not args.studies:
        (RESULTS / "accuracy.md").write_text(report)
        plot(rows, RESULTS / "accuracy.png", f"Real CT, {datetime.date.today()}: Dice per organ and variant")


if __name__ == "__main__":
    main()
