from .deepgrow_3d import DeepGrow3D
from .extreme_points import ExtremePoints
from .segmentation_spleen import SegmentationSpleen

__all__ = ["DeepGrow3D", "ExtremePoints", "SegmentationSpleen"]
