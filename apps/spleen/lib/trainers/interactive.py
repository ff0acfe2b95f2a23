"""What the click models' trainers share: objects of many shapes, and crops made the way inference makes them.

Objects come from every phantom organ, every label of the MONAI Label datastore's final labels and, when
`../shared/data` is present, every TotalSegmentator structure of the real CTs of the patients named in
`$AIAA_REAL_PATIENTS` (comma separated: `example_ct`, `dicom`; default both). Evaluate on the other
patient (`bench/accuracy.py --patients`): leave-one-patient-out.
Crops are augmented as real scans differ: contrast phase and calibration (HU shift and scale), noise, and
slice thickness 1–8 mm.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.inferers import SimpleInferer
from monai.transforms import Randomizable
from monailabel.tasks.train.basic_train import Context

from aiaa_core.phantoms import LABELS
from aiaa_core.transforms import AIR_HU, LoadImageOrTensord, PointHeatmapsd

from .augment import thick_slices
from .data import (
    SHARED_DATA,
    VALIDATION_SEED_OFFSET,
    TrainingObject,
    datastore_items,
    objects,
    phantom_items,
    real_items,
)
from .task import AppTrainTask

REAL_PATIENTS_ENV = "AIAA_REAL_PATIENTS"  # which real patients' structures to train on (default: all)
WARM_START_ENV = "AIAA_WARM_START"  # weights to start from (default: the trainer's own choice)
PATIENT_OF_CASE = {"totalseg/example_ct.nii.gz": "example_ct", "totalseg/example_ct_dicom": "dicom"}


def training_patients() -> set[str]:
    names = os.environ.get(REAL_PATIENTS_ENV, "example_ct,dicom")
    return {n.strip() for n in names.split(",") if n.strip()}


def patient_items(shared_data: Path, patients: set[str]) -> list[dict]:
    """The real CTs of `patients`, with their label maps on the CT grid."""
    return [item for _, item in real_items(shared_data, lambda name: PATIENT_OF_CASE.get(name) in patients)]


def augment_crop(image: torch.Tensor, slice_mm: float, rng: np.random.Generator) -> torch.Tensor:
    """A 1×X×Y×Z crop in HU as another scan could show it: contrast phase / calibration (shift ±100 HU,
    scale ±15 % about 40 HU), noise (σ ≤ 30 HU), and slices 1–8 mm thick (`slice_mm`: the crop's voxel
    size along k, the slice axis)."""
    image = torch.as_tensor(image).float()
    if rng.random() < 0.8:
        image = (image - 40.0) * rng.uniform(0.85, 1.15) + 40.0 + rng.uniform(-100.0, 100.0)
    if rng.random() < 0.5:
        noise = rng.standard_normal(image.shape, dtype=np.float32) * rng.uniform(0.0, 30.0)
        image = image + torch.from_numpy(noise)
    ratio = rng.uniform(1.0, 8.0) / slice_mm
    if rng.random() < 0.5 and ratio > 1.2:
        image = thick_slices(image, ratio)
    return image


def augmented(
    data: dict, transforms: Sequence[Callable], rng: np.random.Generator, thin_scan_around: str | None = None
) -> dict:
    """Run the click pre-processing (crop, then window) with `augment_crop` between the two.

    `thin_scan_around` (a points key): a quarter of the crops become those of a scan only 30–150 mm
    deep (the DICOM example is 40 mm) holding that key's first point: CT air and no label beyond it,
    as a crop padded beyond the image (`pad_beyond_image`) shows it.
    """
    spacing_k = float(np.asarray(data["image"].pixdim, dtype=float)[2])
    data = transforms[0](data)
    start, end = data["crop_box"]
    depth = data["image"].shape[-1]
    slice_mm = spacing_k * (end[2] - start[2]) / depth
    data["image"] = augment_crop(data["image"], slice_mm, rng)
    if thin_scan_around and data.get(thin_scan_around) and rng.random() < 0.25:
        slab = max(2, int(round(rng.uniform(30.0, 150.0) / slice_mm)))
        centre = data[thin_scan_around][0][2]
        low = int(np.clip(centre - rng.integers(0, slab), 0, depth - 1))
        outside = np.ones(depth, dtype=bool)
        outside[low : low + slab] = False
        data["image"][..., torch.from_numpy(outside)] = AIR_HU
        label = torch.as_tensor(data["label"])
        label[..., torch.from_numpy(outside)] = 0
        data["label"] = label
    return run_pipeline(data, transforms[1:])


class ObjectPool:
    """Training and validation objects: phantom organs, real CT structures and the datastore's labels."""

    def __init__(
        self,
        seed: int,
        num_train: int,
        num_val: int,
        shared_data: Path | None = SHARED_DATA,
        skip_phantom_labels: frozenset[int] = frozenset(),
        min_volume_ml: float = 0.0,
        labelled: Sequence[dict] = (),
        labelled_val: Sequence[dict] = (),
    ):
        self.rng = np.random.default_rng(seed)
        phantoms = phantom_items(range(seed, seed + num_train), self.rng, varied_contrast=True)
        real = patient_items(shared_data, training_patients()) if shared_data and shared_data.is_dir() else []
        real += [load_item(item) for item in labelled]
        self.items = phantoms + real
        phantom_objects = objects(phantoms, skip=set(skip_phantom_labels), min_volume_ml=min_volume_ml)
        real_objects = [
            TrainingObject(o.item + len(phantoms), o.value, o.start, o.end)
            for o in objects(real, min_volume_ml=min_volume_ml)
        ]
        # Real structures drawn as often as phantom ones: they are what the models are for.
        self.objects = phantom_objects + real_objects * max(1, len(phantom_objects) // max(1, len(real_objects)))
        print(f"training objects: {len(phantom_objects)} phantom, {len(real_objects)} real or labelled", flush=True)
        self.val_items = phantom_items(
            range(VALIDATION_SEED_OFFSET + seed, VALIDATION_SEED_OFFSET + seed + num_val), self.rng
        )
        self.val_objects = [o for o in objects(self.val_items) if o.value == LABELS["spleen"]]
        first = len(self.val_items)
        self.val_items += [load_item(item) for item in labelled_val]
        self.val_objects += [
            TrainingObject(o.item + first, o.value, o.start, o.end)
            for o in objects(self.val_items[first:], min_volume_ml=min_volume_ml)
        ]


def load_item(item: dict) -> dict:
    """A datastore image and its label map (paths) as channel-first MetaTensors, read once."""
    return LoadImageOrTensord(keys=("image", "label"))(item)


def run_pipeline(data: dict, transforms: Sequence[Callable]) -> dict:
    for transform in transforms:
        data = transform(data)
    return data


def batch(samples: list[dict], points_keys: Sequence[str], sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Network inputs (crop + one heatmap channel per points key, as inference builds them) and targets."""
    heatmaps = PointHeatmapsd(keys="image", points_keys=points_keys, sigma=sigma)
    inputs = torch.stack([heatmaps(s)["image"] for s in samples])
    targets = torch.stack([torch.as_tensor(s["label"]).float() for s in samples])
    return inputs, targets


class ClickTrainTask(AppTrainTask):
    """A click model's trainer: each datalist entry is one object; a sample is a crop around it made by the
    inference pre-processing, its clicks simulated (`make_sample`). Training samples are drawn fresh every
    step (a random transform, so never cached); validation crops are made once (jitter off) and cached."""

    defaults = {"num_train_phantoms": 24, "num_val_phantoms": 4, "train_batch_size": 2}
    points_keys: Sequence[str]
    sigma: float
    skip_phantom_labels: frozenset[int] = frozenset()
    min_volume_ml: float = 0.0

    def make_sample(self, obj: TrainingObject, items: list[dict], jitter: bool) -> dict:
        """A crop of `obj` with its clicks in `points_keys` (image in HU, label 0/1)."""
        raise NotImplementedError

    def training_data(self, request: dict, labelled: list[dict], rng: np.random.Generator) -> tuple[list, list]:
        self.pool = ObjectPool(
            int(request["seed"]),
            int(request["num_train_phantoms"]),
            int(request["num_val_phantoms"]),
            skip_phantom_labels=self.skip_phantom_labels,
            min_volume_ml=self.min_volume_ml,
            labelled=labelled,
            labelled_val=self._labelled_val,
        )
        return [{"object": o} for o in self.pool.objects], [{"object": o} for o in self.pool.val_objects]

    def pre_process(self, request: dict, datastore) -> dict:
        _, self._labelled_val = datastore_items(datastore, float(request.get("val_split") or 0.0))
        return super().pre_process(request, datastore)

    def validation_items(self, labelled: list[dict]) -> list[dict]:
        return []  # already among the pool's validation objects

    def train_pre_transforms(self, context: Context):
        return [DrawSample(self, self.pool.items)]

    def val_pre_transforms(self, context: Context):
        heatmaps = PointHeatmapsd(keys="image", points_keys=self.points_keys, sigma=self.sigma)
        return [lambda d: self.make_sample(d["object"], self.pool.val_items, jitter=False), heatmaps,
                lambda d: {"image": d["image"], "label": torch.as_tensor(d["label"]).float()}]  # fmt: skip

    def collate_fn(self):
        return list  # the samples' click lists differ in length; `iteration` builds the batch

    def train_iteration_update(self, context: Context):
        return self.iteration

    def iteration(self, engine, samples: list[dict]) -> dict:
        """One step on a batch of samples (deepgrow first adds corrective clicks with the current network)."""
        inputs, targets = batch(samples, self.points_keys, self.sigma)
        return engine._iteration(engine, {"image": inputs, "label": targets})  # as MONAI's deepgrow Interaction

    def val_inferer(self, context: Context):
        return SimpleInferer()


class DrawSample(Randomizable):
    """A training sample of the entry's object, jittered and augmented (random: never cached)."""

    def __init__(self, task: ClickTrainTask, items: list[dict]):
        self.task, self.items = task, items

    def randomize(self, data=None) -> None:  # the task's generator draws (one stream, as the weights were trained)
        pass

    def __call__(self, data: dict) -> dict:
        return self.task.make_sample(data["object"], self.items, jitter=True)
