from .transforms import LoadImageOrTensord

__all__ = ["LoadImageOrTensord"]
