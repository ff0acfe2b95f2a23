"""DeepGrow 3D: foreground/background clicks → a binary mask of the clicked object (class-agnostic)."""

from __future__ import annotations

from monailabel.interfaces.tasks.infer_v2 import InferType

from .interactive import InteractiveTask


class DeepGrow3D(InteractiveTask):
    """The crop covers the foreground clicks with `padding_mm`, at least `min_size_mm` wide (padded with
    air beyond the image), and zooms out while the object reaches its border (`InteractiveTask`).

    Background clicks do not widen it: with the committed weights a far background click made the crop,
    and the object in it, coarser (held-out LPS phantom 0.851 → 0.809 after 5 clicks); on the real CTs
    the corrective background clicks lie next to the object, inside the crop, either way.
    """

    task_type = InferType.DEEPGROW
    summary = "DeepGrow 3D: click on an object to segment it"
    box_points = ("foreground",)
    points_keys = ("foreground", "background")
    crop_size = (80, 80, 80)
    padding_mm = 24.0
    min_size_mm = 128.0
    sigma = 2.0
    pad_beyond_image = True

    @property
    def model_info(self) -> dict:
        return {"deepgrow": "3D"}
