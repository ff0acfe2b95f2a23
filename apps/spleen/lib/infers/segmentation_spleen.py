"""Automatic spleen segmentation: whole volume, sliding window at a 3 mm working spacing."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.inferers import Inferer, SlidingWindowInferer
from monai.transforms import EnsureTyped, MapTransform, Orientationd, ScaleIntensityRanged, Spacingd
from monailabel.interfaces.tasks.infer_v2 import InferType
from scipy import ndimage

from aiaa_core.transforms import LoadImageOrTensord, LogitsToInputGridd, RestoreGeometryd, bare

from .base import AppInferTask

# Shared with the trainer so training and inference see the same intensities and grid.
TARGET_SPACING = (3.0, 3.0, 3.0)
CT_WINDOW = (-160.0, 240.0)
ROI_SIZE = (96, 96, 96)
# A spleen, from a small one (~40 mL) to a large splenomegaly; components outside it are not spleens.
SPLEEN_ML = (20.0, 3000.0)
BODY_WINDOWED = 0.1  # windowed CT value above which a voxel is body (about -120 HU)


def preprocessing(keys=("image",), modes=("bilinear",)) -> list[Callable]:
    """Orientation, spacing and CT window, the pipeline's grid-changing part (inverted afterwards)."""
    return [*working_grid(keys, modes), *ct_window()]


def working_grid(keys=("image",), modes=("bilinear",)) -> list[Callable]:
    """RAS at 3 mm: any slice thickness or orientation becomes the grid the network knows."""
    return [Orientationd(keys=keys, axcodes="RAS"), Spacingd(keys=keys, pixdim=TARGET_SPACING, mode=modes)]


def ct_window() -> list[Callable]:
    """HU to 0..1 (training applies its HU augmentation before this)."""
    return [
        ScaleIntensityRanged(keys="image", a_min=CT_WINDOW[0], a_max=CT_WINDOW[1], b_min=0.0, b_max=1.0, clip=True),
        EnsureTyped(keys="image", dtype="float32"),
    ]


class SegmentationSpleen(AppInferTask):
    """Spleen CT segmentation; the logits are resampled back to the input grid before the argmax.

    All of its pre-processing is point-independent, so a session's segmentations resample the volume once.
    """

    def __init__(self, path, network, description="Automatic spleen segmentation (CT)", **kwargs):
        super().__init__(
            path=path,
            network=network,
            type=InferType.SEGMENTATION,
            labels={"spleen": 1},
            dimension=3,
            description=description,
            roi_size=ROI_SIZE,
            **kwargs,
        )

    @property
    def example_shape(self) -> tuple[int, ...]:
        return (1, *ROI_SIZE)

    def point_independent_transforms(self) -> list[Callable]:
        return [LoadImageOrTensord(keys="image"), *preprocessing()]

    def inferer(self, data=None) -> Inferer:
        return SlidingWindowInferer(roi_size=ROI_SIZE, sw_batch_size=1, overlap=0.25, mode="gaussian")

    def post_transforms(self, data=None) -> Sequence[Callable]:
        # Resampling the logits back (the inverse of Orientationd and Spacingd), argmax and the largest
        # connected component, done only around the object (LogitsToInputGridd).
        return [
            KeepPlausibleSpleend(keys="pred", ref_image="image"),
            LogitsToInputGridd(keys="pred", ref_image="image"),
            RestoreGeometryd(keys="pred"),
        ]


class KeepPlausibleSpleend(MapTransform):
    """Keep, of the working-grid prediction's connected components, the one most likely to be the spleen;
    the others become background (`LogitsToInputGridd` then keeps it as the largest).

    The largest component alone is not enough: a false positive (a bowel loop, the stomach wall, a kidney)
    can outgrow a weakly predicted spleen. Plausible components have a spleen's volume (`SPLEEN_ML`), their
    centre inside the trunk (not in an arm beside it) and on the patient's left of the trunk's centre (RAS
    world x below it); the one with the most confidence
    (summed positive score) wins. Without a plausible one, the most confident component is kept.
    """

    def __init__(self, keys="pred", ref_image: str = "image"):
        super().__init__(keys)
        self.ref_image = ref_image

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        image = d[self.ref_image]
        affine = np.asarray(torch.as_tensor(image.affine), dtype=float)
        body = bare(image)[0].numpy() > BODY_WINDOWED
        for key in self.key_iterator(d):
            logits = bare(d[key]).float()
            score = (logits[1:].max(0).values - logits[0]).numpy()
            keep = plausible_spleen(score, body, affine)
            if keep is not None:
                logits = logits.clone()
                logits[0][torch.from_numpy(~keep) & (torch.from_numpy(score) > 0)] = logits[1:].max(0).values.max() + 1
                d[key] = logits
        return d


def trunk_of(body: np.ndarray) -> np.ndarray:
    """The largest body part (not an arm beside it, not the table), its axial slices' holes (lungs, bowel
    gas) filled: where an organ's centre can lie."""
    parts, count = ndimage.label(body)
    if count == 0:
        return body
    trunk = parts == np.argmax(np.bincount(parts.ravel())[1:]) + 1
    return ndimage.binary_fill_holes(trunk, structure=np.ones((3, 3, 1), dtype=bool))


def plausible_spleen(score: np.ndarray, body: np.ndarray, affine: np.ndarray) -> np.ndarray | None:
    """The component of `score > 0` to keep (bool mask), or None when there is at most one component."""
    components, count = ndimage.label(score > 0, structure=np.ones((3, 3, 3), dtype=bool))
    if count <= 1:
        return None
    index = np.arange(1, count + 1)
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000.0
    volume = ndimage.sum_labels(np.ones_like(score), components, index) * voxel_ml
    confidence = ndimage.sum_labels(np.clip(score, 0, None), components, index)
    centres = np.asarray(ndimage.center_of_mass(np.ones_like(score), components, index)).reshape(-1, 3)
    world_x = centres @ affine[0, :3] + affine[0, 3]
    trunk = trunk_of(body)
    trunk_voxels = np.argwhere(trunk)
    body_x = float((trunk_voxels.mean(0) @ affine[0, :3]) + affine[0, 3]) if trunk_voxels.size else np.inf
    centre_voxels = np.clip(np.round(centres).astype(int), 0, np.asarray(score.shape) - 1)
    in_trunk = trunk[tuple(centre_voxels.T)]
    plausible = (volume >= SPLEEN_ML[0]) & (volume <= SPLEEN_ML[1]) & (world_x < body_x) & in_trunk
    ranked = np.where(plausible, confidence, confidence - confidence.max() - 1.0)
    return components == index[int(np.argmax(ranked))]
