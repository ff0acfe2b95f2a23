"""Tensor helpers the core's transforms share."""

from __future__ import annotations

import torch


def bare(value) -> torch.Tensor:
    """The tensor without MONAI metadata, no copy (MetaTensor operations cost a lot per call)."""
    tensor = torch.as_tensor(value)
    return tensor.as_tensor() if hasattr(tensor, "as_tensor") else tensor
