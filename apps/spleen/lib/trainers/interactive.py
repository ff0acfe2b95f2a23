"""What the click models' trainers share: objects of many shapes, and crops made the way inference makes them.

Objects come from every phantom organ and, when `../shared/data` is present, every TotalSegmentator
organ of the real CTs except the four the README reports accuracy on (see `data.REAL_HELD_OUT`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from lib.transforms import PointHeatmapsd
from server.phantoms import LABELS

from .data import REAL_HELD_OUT, VALIDATION_SEED_OFFSET, TrainingObject, objects, phantom_items, real_items
from .loop import dice_score

SHARED_DATA = Path(__file__).resolve().parents[4].parent / "shared" / "data"  # ../shared/data beside the repo


class ObjectPool:
    """Training and validation objects; `sample()` draws a training object uniformly."""

    def __init__(
        self,
        seed: int,
        num_train: int,
        num_val: int,
        shared_data: Path | None = SHARED_DATA,
        skip_phantom_labels: frozenset[int] = frozenset(),
        min_volume_ml: float = 0.0,
    ):
        self.rng = np.random.default_rng(seed)
        phantoms = phantom_items(range(seed, seed + num_train), self.rng)
        real = real_items(shared_data) if shared_data and shared_data.is_dir() else []
        self.items = phantoms + real
        self.objects = objects(phantoms, skip=set(skip_phantom_labels), min_volume_ml=min_volume_ml) + [
            TrainingObject(o.item + len(phantoms), o.value, o.start, o.end)
            for o in objects(real, skip=set(REAL_HELD_OUT), min_volume_ml=min_volume_ml)
        ]
        self.val_items = phantom_items(
            range(VALIDATION_SEED_OFFSET + seed, VALIDATION_SEED_OFFSET + seed + num_val), self.rng
        )
        self.val_objects = [o for o in objects(self.val_items) if o.value == LABELS["spleen"]]

    def sample(self) -> TrainingObject:
        return self.objects[self.rng.integers(len(self.objects))]


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


def validation_dice(network: torch.nn.Module, samples: list[dict], points_keys: Sequence[str], sigma: float) -> float:
    """Mean Dice over the validation crops, one at a time (InstanceNorm makes batching irrelevant)."""
    inputs, targets = batch(samples, points_keys, sigma)
    return float(np.mean([dice_score(network(x[None]), y[None]) for x, y in zip(inputs, targets, strict=True)]))
