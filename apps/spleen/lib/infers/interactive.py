"""The two click models' shared pipeline: crop around the points, add point heatmaps, infer, paste back.

Both infer on a crop resampled to `crop_size`, never on the whole volume, so a click costs the same on
a 512×512×300 CT as on a small one. When the predicted object reaches the crop's border (inside the
image), the field of view was too small for it: the task zooms out (a crop `zoom_factor` times larger in
mm, the same `crop_size` voxels, so coarser) and infers again, at most `max_zoom_outs` times, so one click
segments a whole liver (nnInteractive's auto-zoom, Isensee et al. 2025).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.inferers import Inferer, SimpleInferer
from monai.transforms import EnsureTyped, MapTransform, ScaleIntensityRanged
from monailabel.interfaces.tasks.infer_v2 import InferType

from aiaa_core.transforms import (
    ZOOM_BOX,
    CropAroundPointsd,
    LoadImageOrTensord,
    PasteCropd,
    PointHeatmapsd,
    RestoreGeometryd,
    bare,
    fit_in_image,
)

from .base import AppInferTask

# A wide CT window: the click models are class-agnostic (soft tissue, fluid, gas-filled and bony objects).
CT_WINDOW = (-400.0, 600.0)


def click_preprocessing(
    keys: Sequence[str],
    modes: Sequence[str],
    box_points: Sequence[str],
    points_keys: Sequence[str],
    roi_size: Sequence[int],
    padding_mm: float,
    min_size_mm: float,
    pad_beyond_image: bool = False,
) -> list[Callable]:
    """Crop around the points and window the CT; the trainers use it with the label as a second key."""
    return [
        CropAroundPointsd(
            keys=keys,
            box_points=box_points,
            points_keys=points_keys,
            roi_size=roi_size,
            padding_mm=padding_mm,
            min_size_mm=min_size_mm,
            modes=modes,
            pad_beyond_image=pad_beyond_image,
        ),
        ScaleIntensityRanged(keys="image", a_min=CT_WINDOW[0], a_max=CT_WINDOW[1], b_min=0.0, b_max=1.0, clip=True),
    ]


UNCROPPED = "uncropped"  # data key: the image and points before the crop (for a zoom-out pass)
TOUCH_FRACTION = 0.003  # a crop face "touched" when this share of its voxels is foreground


class KeepUncroppedd(MapTransform):
    """Keep references (no copy) to the image and the points as they are before the crop."""

    def __init__(self, keys, points_keys: Sequence[str]):
        super().__init__(keys)
        self.points_keys = tuple(points_keys)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        d[UNCROPPED] = {k: d[k] for k in (*self.keys, *self.points_keys) if k in d}
        return d


def touched_faces(scores: torch.Tensor, fraction: float = TOUCH_FRACTION) -> np.ndarray:
    """3×2 booleans: does the foreground (score > 0, X×Y×Z) cover `fraction` of each face of the crop?"""
    foreground = scores > 0
    touched = np.zeros((3, 2), dtype=bool)
    for axis in range(3):
        for side, index in enumerate((0, -1)):
            face = foreground.select(axis, index)
            touched[axis, side] = bool(face.sum() >= max(1.0, fraction * face.numel()))
    return touched


def zoomed_box(
    start: Sequence[int],
    end: Sequence[int],
    shape: Sequence[int],
    touched: np.ndarray,
    factor: float,
    beyond_image: bool = False,
) -> tuple[list[int], list[int]] | None:
    """The next, `factor` times larger box ([start, end)) for a prediction that touched the faces
    `touched` (3×2) of the box, or None when no touched face can move (it is the image's edge).

    It grows away from the touched faces: a box touched on one side only keeps a tenth of its size
    beyond the other; one touched on both sides, or neither, grows about its centre. Shifted, not
    shrunk, to stay inside the image where it fits (`beyond_image`: it may outgrow the image).
    """
    start, end, shape = (np.asarray(v, dtype=int) for v in (start, end, shape))
    movable = touched & np.stack([start > 0, end < shape], axis=1)
    if not movable.any():
        return None
    size = end - start
    new_size = np.ceil(size * factor).astype(int)
    if not beyond_image:
        new_size = np.minimum(new_size, shape)
    new_start = np.round((start + end) / 2 - new_size / 2).astype(int)
    margin = np.ceil(size / 10).astype(int)
    low_only, high_only = movable[:, 0] & ~movable[:, 1], movable[:, 1] & ~movable[:, 0]
    new_start = np.where(low_only, end + margin - new_size, new_start)
    new_start = np.where(high_only, start - margin, new_start)
    new_start = fit_in_image(new_start, new_size, shape)
    new_end = new_start + new_size
    if (new_start == start).all() and (new_end == end).all():
        return None
    return new_start.tolist(), new_end.tolist()


class InteractiveTask(AppInferTask):
    """Point-driven 3D task: subclasses say which points shape the box and which become heatmaps."""

    task_type: InferType
    summary: str  # the model's description
    box_points: tuple[str, ...] = ()
    points_keys: tuple[str, ...] = ()
    crop_size: tuple[int, int, int] = (80, 80, 80)
    padding_mm: float = 20.0
    min_size_mm: float = 0.0
    sigma: float = 2.0
    max_zoom_outs: int = 2
    zoom_factor: float = 2.0
    pad_beyond_image: bool = False  # crops keep their size in mm at the image's edge (padded with air)

    def __init__(self, path, network, **kwargs):
        super().__init__(
            path=path, network=network, type=self.task_type, labels=[], dimension=3, description=self.summary, **kwargs
        )

    @property
    def example_shape(self) -> tuple[int, ...]:
        return (1 + len(self.points_keys), *self.crop_size)

    @property
    def model_info(self) -> dict:
        """Extra keys of the AIAA model object (`/v1/models`)."""
        return {}

    def point_independent_transforms(self) -> list[Callable]:
        return [LoadImageOrTensord(keys="image")]

    def point_dependent_transforms(self) -> list[Callable]:
        return [
            KeepUncroppedd(keys="image", points_keys=self.points_keys),
            *click_preprocessing(
                ("image",),
                ("trilinear",),
                self.box_points,
                self.points_keys,
                self.crop_size,
                self.padding_mm,
                self.min_size_mm,
                self.pad_beyond_image,
            ),
            PointHeatmapsd(keys="image", points_keys=self.points_keys, sigma=self.sigma),
            EnsureTyped(keys="image", dtype="float32"),
        ]

    def inferer(self, data=None) -> Inferer:
        return SimpleInferer()

    def run_inferer(self, data, convert_to_batch=True, device="cuda"):
        """Infer on the crop; while the object reaches the crop's border, zoom out and infer again."""
        data = super().run_inferer(data, convert_to_batch, device)
        for zoom in range(self.max_zoom_outs):
            logits = bare(data[self.output_label_key]).float()
            scores = logits[1] - logits[0] if logits.shape[0] == 2 else logits[0]
            start, end = data["crop_box"]
            touched = touched_faces(scores)
            box = zoomed_box(start, end, data["image_shape"], touched, self.zoom_factor, self.pad_beyond_image)
            if box is None:
                break
            redo = {**data, **data[UNCROPPED], ZOOM_BOX: box}
            for transform in self.point_dependent_transforms():
                redo = transform(redo)
            redo["zoom_outs"] = zoom + 1
            data = super().run_inferer(redo, convert_to_batch, device)
        return data

    def post_transforms(self, data=None) -> Sequence[Callable]:
        return [PasteCropd(keys="pred", result_key=self.output_json_key), RestoreGeometryd(keys="pred")]
