"""Training loops for the app's models (run by `aiaa train <model>`)."""

from .deepgrow_3d import train as train_deepgrow_3d
from .extreme_points import train as train_extreme_points
from .segmentation_spleen import train as train_segmentation_spleen

TRAINERS = {
    "segmentation_spleen": train_segmentation_spleen,
    "deepgrow_3d": train_deepgrow_3d,
    "extreme_points": train_extreme_points,
}
