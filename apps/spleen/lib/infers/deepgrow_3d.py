"""DeepGrow 3D: foreground/background clicks → a binary mask of the clicked object (class-agnostic)."""

from __future__ import annotations

from monailabel.interfaces.tasks.infer_v2 import InferType

from .interactive import InteractiveTask


class DeepGrow3D(InteractiveTask):
    """The crop covers every click (foreground and background) with `padding_mm`, at least `min_size_mm`
    wide, and zooms out while the object reaches its border (`InteractiveTask`)."""

    task_type = InferType.DEEPGROW
    summary = "DeepGrow 3D: click on an object to segment it"
    box_points = ("foreground", "background")
    points_keys = ("foreground", "background")
    crop_size = (80, 80, 80)
    padding_mm = 24.0
    min_size_mm = 128.0
    sigma = 2.0

    @property
    def model_info(self) -> dict:
        return {"deepgrow": "3D"}
