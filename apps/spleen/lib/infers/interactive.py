"""The two click models' shared pipeline: crop around the points, add point heatmaps, infer, paste back.

Both infer on a crop resampled to `crop_size`, never on the whole volume, so a click costs the same on
a 512×512×300 CT as on a small one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from monai.inferers import Inferer, SimpleInferer
from monai.transforms import EnsureTyped, ScaleIntensityRanged
from monailabel.interfaces.tasks.infer_v2 import InferType

from lib.transforms import CropAroundPointsd, LoadImageOrTensord, PasteCropd, PointHeatmapsd, RestoreGeometryd

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
        ),
        ScaleIntensityRanged(keys="image", a_min=CT_WINDOW[0], a_max=CT_WINDOW[1], b_min=0.0, b_max=1.0, clip=True),
    ]


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
            *click_preprocessing(
                ("image",),
                ("trilinear",),
                self.box_points,
                self.points_keys,
                self.crop_size,
                self.padding_mm,
                self.min_size_mm,
            ),
            PointHeatmapsd(keys="image", points_keys=self.points_keys, sigma=self.sigma),
            EnsureTyped(keys="image", dtype="float32"),
        ]

    def inferer(self, data=None) -> Inferer:
        return SimpleInferer()

    def post_transforms(self, data=None) -> Sequence[Callable]:
        return [PasteCropd(keys="pred", result_key=self.output_json_key), RestoreGeometryd(keys="pred")]
