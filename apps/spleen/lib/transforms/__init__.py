from .transforms import (
    CropAroundPointsd,
    LoadImageOrTensord,
    PasteCropd,
    PointHeatmapsd,
    RestoreGeometryd,
    crop_box,
    point_heatmap,
)

__all__ = [
    "CropAroundPointsd",
    "LoadImageOrTensord",
    "PasteCropd",
    "PointHeatmapsd",
    "RestoreGeometryd",
    "crop_box",
    "point_heatmap",
]
