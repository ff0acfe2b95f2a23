"""Extreme points (DExtr3D style): six or more boundary points → a binary mask of the object inside."""

from __future__ import annotations

from monailabel.interfaces.tasks.infer_v2 import InferType

from .interactive import InteractiveTask


class ExtremePoints(InteractiveTask):
    """Crop = bounding box of the points plus `padding_mm` (AIAA's `padding`), resampled to `roi`."""

    box_points = ("points",)
    points_keys = ("points",)
    crop_size = (80, 80, 80)
    padding_mm = 20.0
    sigma = 3.0

    def __init__(self, path, network, description="Extreme points: click 6 boundary points of an object", **kwargs):
        super().__init__(
            path=path,
            network=network,
            type=InferType.ANNOTATION,
            labels=[],
            dimension=3,
            description=description,
            **kwargs,
        )
        self.model_info = {"padding": self.padding_mm, "roi": list(self.crop_size), "sigma": self.sigma}
