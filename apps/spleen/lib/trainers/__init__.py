"""The app's trainers: MONAI Label `BasicTrainTask`s (lib.configs' `trainer()` builds them; `aiaa train` and
MONAI Label's /train/ run the same ones)."""

from .deepgrow_3d import DeepGrow3DTrainer
from .extreme_points import ExtremePointsTrainer
from .segmentation_spleen import SegmentationSpleenTrainer

__all__ = ["DeepGrow3DTrainer", "ExtremePointsTrainer", "SegmentationSpleenTrainer"]
