from .transforms import (
    PRED_BOX,
    CropAroundPointsd,
    LoadImageOrTensord,
    LogitsToInputGridd,
    PasteCropd,
    PointHeatmapsd,
    RestoreGeometryd,
    crop_box,
    largest_component,
    point_heatmap,
)

__all__ = [
    "PRED_BOX",
    "CropAroundPointsd",
    "LoadImageOrTensord",
    "LogitsToInputGridd",
    "PasteCropd",
    "PointHeatmapsd",
    "RestoreGeometryd",
    "crop_box",
    "largest_component",
    "point_heatmap",
]
