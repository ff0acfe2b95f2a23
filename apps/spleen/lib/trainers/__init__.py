"""Training loops for the app's models (run by `aiaa train <model>`)."""

from .segmentation_spleen import train as train_segmentation_spleen

TRAINERS = {"segmentation_spleen": train_segmentation_spleen}
