"""Extreme points (DExtr3D style): six or more boundary points → a binary mask of the object inside."""

from __future__ import annotations

from monailabel.interfaces.tasks.infer_v2 import InferType

from .interactive import InteractiveTask


class ExtremePoints(InteractiveTask):
    """Crop = bounding box of the points plus `padding_mm` (AIAA's `padding`), resampled to `roi`."""

    task_type = InferType.ANNOTATION
    summary = "Extreme points: click 6 boundary points of an object"
    box_points = ("points",)
    points_keys = ("points",)
    crop_size = (80, 80, 80)
    padding_mm = 20.0
    sigma = 3.0

    @property
    def model_info(self) -> dict:
        return {"padding": self.padding_mm, "roi": list(self.crop_size), "sigma": self.sigma}
