"""Extreme points (DExtr3D style): six or more boundary points → a binary mask of the object inside."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from monailabel.interfaces.tasks.infer_v2 import InferType

from aiaa_core.phantoms import LABELS
from aiaa_core.transforms import FitToPointsBoxd, GrowInPointsBoxd, TrimToTissued

from .interactive import CT_WINDOW, InteractiveTask


class ExtremePoints(InteractiveTask):
    """Crop = bounding box of the points plus `padding_mm` (AIAA's `padding`), resampled to `roi`.

    The points bound the object, so the mask is fitted to their box (`aiaa_core.box_fit`): nothing outside it
    (one crop voxel of tolerance), and the threshold lowered step by step until the mask reaches each of
    the box's six faces, as the object does by definition of its extreme points. Then an intensity
    region grown from the mask's core within the box is added where it agrees (`aiaa_core.box_region`),
    and the result is trimmed to the tissue of its core (`aiaa_core.tissue_trim`: spills into fat or lung).
    """

    task_type = InferType.ANNOTATION
    summary = "Extreme points: click 6 boundary points of an object"
    box_points = ("points",)
    points_keys = ("points",)
    crop_size = (80, 80, 80)
    padding_mm = 20.0
    sigma = 3.0
    pad_beyond_image = True
    max_zoom_outs = 0  # the points bound the object: a prediction at the crop's border is a leak

    def __init__(self, path, network, **kwargs):
        super().__init__(path, network, **kwargs)
        # Class-agnostic, so listed under the structures it was trained on: AIAA clients that filter models
        # by label (MITK) then find it for each of them. Its mask stays binary: 1 = the object pointed at.
        self.labels = list(LABELS)

    @property
    def model_info(self) -> dict:
        return {"padding": self.padding_mm, "roi": list(self.crop_size), "sigma": self.sigma}

    def post_transforms(self, data=None) -> Sequence[Callable]:
        # The box fit is a transform (not task code) so that an exported MMAR/bundle runs it too.
        return [
            FitToPointsBoxd(keys="pred", points_key="points"),
            GrowInPointsBoxd(keys="pred", image_key="image", points_key="points", window=CT_WINDOW),
            TrimToTissued(keys="pred", image_key="image", window=CT_WINDOW),
            *super().post_transforms(data),
        ]
