"""Dice of the served `segmentation_spleen` on the real CTs of ../shared/data and their robustness variants.

    .venv/bin/python bench/seg_realct.py [--weights FILE] [--shared-data ../shared/data] [--phantoms 0]

Runs the model the way the server does (`server.inference.run_model` with the registry's model) on every
real scan and on variants made from it: slices resampled to 5 and 7.5 mm (thick-slice averaging, not
point sampling), ±80 HU, LPS and oblique reorientation. Truth: label 1 (spleen) of the TotalSegmentator
mask, carried onto each variant's grid. Prints one line per case and a Markdown table at the end.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

REPO = Path(__file__).resolve().parents[1]

from aiaa_core.evaluation import dice  # noqa: E402
from aiaa_core.phantoms import LABELS, make_phantom  # noqa: E402
from aiaa_core.volumes import to_array  # noqa: E402
from server.app_loader import import_app_module  # noqa: E402
from server.inference import run_model  # noqa: E402
from server.registry import app_model, load_app_models  # noqa: E402

_data = import_app_module(REPO / "apps" / "spleen", "lib.trainers.data")  # the app\'s real-CT cases
REAL_CASES, read_case = _data.REAL_CASES, _data.read_case

SPLEEN = 1
VARIANTS = ("original", "5mm", "7.5mm", "+80HU", "-80HU", "LPS", "oblique")


def thick_slices(image: sitk.Image, thickness: float, interpolator=sitk.sitkLinear) -> sitk.Image:
    """The volume re-sliced at `thickness` mm along its third axis, each slice the average over its thickness."""
    spacing = image.GetSpacing()
    if interpolator == sitk.sitkLinear and thickness > spacing[2]:
        sigma = np.sqrt(thickness**2 - spacing[2] ** 2) / 2.355 / spacing[2]  # voxels; FWHM ≈ slice thickness
        array = ndimage.gaussian_filter1d(sitk.GetArrayFromImage(image).astype(np.float32), sigma, axis=0)
        smooth = sitk.GetImageFromArray(array)
        smooth.CopyInformation(image)
        image = sitk.Cast(smooth, image.GetPixelID())
    size = list(image.GetSize())
    extent = size[2] * spacing[2]
    new_size = [size[0], size[1], max(1, int(round(extent / thickness)))]
    new_spacing = [spacing[0], spacing[1], thickness]
    # keep the slab's centre where it was
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    old_first = np.asarray(image.GetOrigin())
    shift = (-(spacing[2] / 2) + thickness / 2 + (extent - new_size[2] * thickness) / 2) * direction[:, 2]
    return sitk.Resample(
        image, new_size, sitk.Transform(), interpolator, tuple(old_first + shift), new_spacing,
        image.GetDirection(), -1024.0 if interpolator == sitk.sitkLinear else 0.0, image.GetPixelID(),
    )  # fmt: skip


def flip_to_lps(image: sitk.Image) -> sitk.Image:
    """The same voxels stored with index axes pointing L, P, S (an axis flip, no resampling)."""
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    flips = [bool(direction[:, a] @ target < 0) for a, target in enumerate(np.eye(3))]
    return sitk.Flip(image, flips)


def oblique(image: sitk.Image, interpolator, degrees: float = 20.0) -> sitk.Image:
    """The volume on a grid rotated by `degrees` about an oblique axis, covering the same field of view."""
    axis = np.array([1.0, 0.5, 0.3])
    axis /= np.linalg.norm(axis)
    rotation = sitk.VersorTransform(tuple(axis), np.deg2rad(degrees)).GetMatrix()
    direction = np.asarray(rotation).reshape(3, 3) @ np.asarray(image.GetDirection()).reshape(3, 3)
    spacing = np.asarray(image.GetSpacing())
    size = np.asarray(image.GetSize())
    centre = np.asarray(image.TransformContinuousIndexToPhysicalPoint(tuple((size - 1) / 2.0)))
    origin = centre - direction @ ((size - 1) / 2.0 * spacing)
    default = -1024.0 if interpolator == sitk.sitkLinear else 0.0
    return sitk.Resample(
        image, [int(s) for s in size], sitk.Transform(), interpolator, tuple(origin), tuple(spacing),
        tuple(direction.ravel()), default, image.GetPixelID(),
    )  # fmt: skip


def variant(image: sitk.Image, truth: sitk.Image, name: str) -> tuple[sitk.Image, sitk.Image]:
    """(image, binary truth) of one robustness variant."""
    if name == "original":
        return image, truth
    if name.endswith("mm"):
        thickness = float(name[:-2])
        soft = thick_slices(sitk.Cast(truth, sitk.sitkFloat32), thickness)
        return thick_slices(image, thickness), sitk.Cast(soft > 0.5, sitk.sitkUInt8)
    if name.endswith("HU"):
        return sitk.Cast(sitk.Cast(image, sitk.sitkFloat32) + float(name[:-2]), image.GetPixelID()), truth
    if name == "LPS":
        return flip_to_lps(image), flip_to_lps(truth)
    if name == "oblique":
        return oblique(image, sitk.sitkLinear), oblique(truth, sitk.sitkNearestNeighbor)
    raise ValueError(name)


def real_scans(shared: Path) -> Iterator[tuple[str, sitk.Image, sitk.Image]]:
    for image_name, label_name in REAL_CASES:
        if (shared / image_name).exists():
            image, labels = read_case(shared, image_name, label_name)
            yield Path(image_name).name.removesuffix(".nii.gz"), image, sitk.Cast(labels == SPLEEN, sitk.sitkUInt8)


def evaluate(model, image: sitk.Image, truth: sitk.Image) -> tuple[float, float, int]:
    started = time.perf_counter()
    mask, _ = run_model(model, image, {})
    seconds = time.perf_counter() - started
    return dice(mask, to_array(truth)), seconds, int(mask.astype(bool).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, help="weights file (default: the app's model/segmentation_spleen.pt)")
    parser.add_argument("--shared-data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--scans", help="only these scans, comma separated (example_ct, example_ct_dicom)")
    parser.add_argument("--phantoms", type=int, default=0, help="also the first N held-out test phantoms (200000..)")
    args = parser.parse_args()
    app_dir = REPO / "apps" / "spleen"
    if args.weights:
        model = app_model(app_dir, "segmentation_spleen", args.weights)
    else:
        model = next(m for m in load_app_models(app_dir, "segmentation_spleen"))
    rows = []
    for name, image, truth in real_scans(args.shared_data):
        if args.scans and name not in args.scans.split(","):
            continue
        for kind in args.variants.split(","):
            v_image, v_truth = variant(image, truth, kind)
            score, seconds, voxels = evaluate(model, v_image, v_truth)
            rows.append((name, kind, score, seconds))
            print(f"{name:20s} {kind:8s} Dice {score:.3f}  {seconds:.2f} s  {voxels} voxels "
                  f"(truth {int(to_array(v_truth).sum())}) size {v_image.GetSize()}", flush=True)  # fmt: skip
    orientations = ("RAS", "LPS", "LAS", "oblique")
    for i in range(args.phantoms):
        spacing = (2.5 + 0.3 * (i % 3), 2.5 + 0.3 * (i % 3), 2.5 + 0.5 * (i % 4))
        size = tuple(int(fov / s) for fov, s in zip((350, 290, 200), spacing, strict=True))
        phantom = make_phantom(200_000 + i, size=size, spacing=spacing, orientation=orientations[i % 4])
        truth = sitk.Cast(phantom.label == LABELS["spleen"], sitk.sitkUInt8)
        score, seconds, _ = evaluate(model, phantom.image, truth)
        rows.append((f"phantom {200_000 + i}", orientations[i % 4], score, seconds))
        print(f"phantom {200_000 + i} {orientations[i % 4]:8s} Dice {score:.3f}  {seconds:.2f} s", flush=True)
    print("\n| scan | variant | Dice | seconds |\n|---|---|---|---|")
    for name, kind, score, seconds in rows:
        print(f"| {name} | {kind} | {score:.3f} | {seconds:.2f} |")
    real = [r[2] for r in rows if not r[0].startswith("phantom")]
    if real:
        print(f"\nreal CT: mean {np.mean(real):.3f}, min {np.min(real):.3f} over {len(real)} cases")
    phantoms = [r[2] for r in rows if r[0].startswith("phantom")]
    if phantoms:
        print(f"phantoms: mean {np.mean(phantoms):.3f}, min {np.min(phantoms):.3f}")


if __name__ == "__main__":
    main()
