"""Training data: the MONAI Label datastore's final labels, synthetic phantoms (always), an MSD Task09
folder, and the real CTs of ../shared/data."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from tqdm import tqdm

from aiaa_core.phantoms import ORIENTATIONS, make_phantom
from aiaa_core.volumes import read_image_file, to_metatensor

SHARED_DATA = Path(__file__).resolve().parents[4].parent / "shared" / "data"  # ../shared/data beside the repo
PHANTOM_FOV_MM = (360.0, 300.0, 220.0)
VALIDATION_SEED_OFFSET = 100_000  # validation phantoms use seeds from here on, never used in training

REAL_CASES = (
    ("totalseg/example_ct.nii.gz", "totalseg/example_seg_fast_force_split.nii.gz"),
    ("totalseg/example_ct_dicom", "totalseg/example_seg_dicom.nii.gz"),
)


def phantom_items(
    seeds,
    rng: np.random.Generator,
    varied_contrast: bool = False,
    dose_range: tuple[float, float] = (0.7, 1.6),
    unenhanced_share: float = 0.0,
) -> list[dict]:
    """Phantoms at random spacings (1.5–4 mm) and the phantom orientations, as MetaTensors.

    `varied_contrast`: contrast doses drawn from `dose_range` (1.6: spleen ~165 HU) and, for
    `unenhanced_share` of them, unenhanced (dose 0–0.2, spleen ~45 HU), instead of the seeded enhanced
    scans (spleen ~90–120 HU): real spleens range from ~30 to ~165 HU.
    """
    items = []
    for seed in tqdm(seeds, desc="phantoms", leave=False):
        spacing = tuple(float(s) for s in rng.uniform(1.5, 4.0, size=3))
        size = tuple(int(np.ceil(fov / s)) for fov, s in zip(PHANTOM_FOV_MM, spacing, strict=True))
        orientation = ORIENTATIONS[seed % len(ORIENTATIONS)]
        contrast = None
        if varied_contrast:
            dose = rng.uniform(0.0, 0.2) if rng.random() < unenhanced_share else rng.uniform(*dose_range)
            contrast = (float(rng.uniform(0.0, 1.0)), float(dose))
        phantom = make_phantom(seed, size=size, spacing=spacing, orientation=orientation, contrast=contrast)
        items.append({"image": to_metatensor(phantom.image), "label": to_metatensor(phantom.label)})
    return items


def datastore_items(datastore, val_split: float) -> tuple[list[dict], list[dict]]:
    """(train, validation) image/label paths of the MONAI Label datastore's images with a final label
    (the clinicians' saved labels); `val_split` of them validate, at least one stays for training."""
    labelled = list(datastore.datalist()) if datastore is not None else []
    n_val = min(int(len(labelled) * val_split), max(0, len(labelled) - 1))
    return labelled[n_val:], labelled[:n_val]


def msd_items(data_dir: Path) -> list[dict]:
    """Image/label paths of an MSD Task09-style folder (dataset.json 'training' list)."""
    dataset = json.loads((data_dir / "dataset.json").read_text())
    return [{"image": str(data_dir / i["image"]), "label": str(data_dir / i["label"])} for i in dataset["training"]]


def real_items(
    shared_data: Path | None, wanted: Callable[[str], bool] = lambda image_name: True
) -> list[tuple[str, dict]]:
    """(image name, item) of the real CTs present in `shared_data` that are `wanted`, with their
    TotalSegmentator masks resampled onto the CT grid (empty when absent)."""
    items = []
    for image_name, label_name in REAL_CASES:
        if shared_data is None or not wanted(image_name):
            continue
        if not (shared_data / image_name).exists() or not (shared_data / label_name).exists():
            continue
        image, label = read_case(shared_data, image_name, label_name)
        items.append((image_name, {"image": to_metatensor(image), "label": to_metatensor(label)}))
    return items


def read_case(shared_data: Path, image_name: str, label_name: str) -> tuple[sitk.Image, sitk.Image]:
    """One real CT (a file or a DICOM folder, decoded as the server decodes uploads) and its mask on the CT's grid."""
    image_path = shared_data / image_name
    image = read_image_file(image_path)
    labels = sitk.ReadImage(str(shared_data / label_name))
    return image, sitk.Resample(labels, image, sitk.Transform(), sitk.sitkNearestNeighbor)


@dataclass(frozen=True)
class TrainingObject:
    """One object to learn to delineate: a label value of one item, and its bounding box."""

    item: int
    value: int
    start: tuple[int, int, int]
    end: tuple[int, int, int]

    def mask(self, items: list[dict]) -> MetaTensor:
        label = items[self.item]["label"]
        return MetaTensor((torch.as_tensor(label) == self.value).to(torch.uint8), meta=label.meta)


def objects(
    items: list[dict], *, skip: set[int] = frozenset(), min_voxels: int = 300, min_volume_ml: float = 0.0
) -> list[TrainingObject]:
    """Every label value (but `skip`) of every item with at least `min_voxels` voxels and `min_volume_ml` mL."""
    found = []
    for index, item in enumerate(items):
        label = np.asarray(item["label"][0])
        voxel_ml = float(np.prod(np.asarray(item["label"].pixdim[:3], dtype=float))) / 1000.0
        min_voxels_here = max(min_voxels, int(np.ceil(min_volume_ml / voxel_ml)))
        for value in np.unique(label):
            if value == 0 or int(value) in skip:
                continue
            voxels = np.argwhere(label == value)
            if len(voxels) >= min_voxels_here:
                found.append(TrainingObject(index, int(value), tuple(voxels.min(0)), tuple(voxels.max(0) + 1)))
    return found
