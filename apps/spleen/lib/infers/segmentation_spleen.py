"""Automatic spleen segmentation: whole volume, sliding window at a 3 mm working spacing."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from monai.inferers import Inferer, SlidingWindowInferer
from monai.transforms import EnsureTyped, Orientationd, ScaleIntensityRanged, Spacingd
from monailabel.interfaces.tasks.infer_v2 import InferType

from aiaa_core.transforms import KeepPlausibleSpleend, LoadImageOrTensord, LogitsToInputGridd, RestoreGeometryd

from .base import AppInferTask

# Shared with the trainer so training and inference see the same intensities and grid.
TARGET_SPACING = (3.0, 3.0, 3.0)
CT_WINDOW = (-160.0, 240.0)
ROI_SIZE = (96, 96, 96)
# A spleen, from a small one (~40 mL) to a large splenomegaly; components outside it are not spleens.


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
