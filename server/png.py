"""Moved: the PNG mask writer is part of `server.mask_writing` (`encode_mask(..., ".png")`); this name goes away."""

from .mask_writing import PNG_DTYPES, PNG_EXTENSION, encode_mask


def encode_png_mask(mask_ij, reference, dtype: str = "uint8") -> bytes:
    return encode_mask(mask_ij, reference, PNG_EXTENSION, dtype)


__all__ = ["PNG_DTYPES", "PNG_EXTENSION", "encode_png_mask"]
