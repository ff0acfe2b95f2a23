from .segmentation_spleen import SegmentationSpleen

__all__ = ["SegmentationSpleen"]
