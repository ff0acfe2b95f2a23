"""AIAA-compatible annotation server built on MONAI and MONAI Label."""

from aiaa_core import __version__

__all__ = ["__version__"]
