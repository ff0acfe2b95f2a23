"""AIAA-compatible annotation server built on MONAI and MONAI Label."""

__version__ = "0.1.0"
