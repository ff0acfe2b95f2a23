"""Transforms of our own, used by the app's pipelines under both hosts."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform


class LoadImageOrTensord(MapTransform):
    """Load `key` from a file path, or keep it when it is already a decoded channel-first MetaTensor.

    Stock MONAI Label hands the task a path; our server hands it the image it decoded once (and
    keeps in a session), so the same pipeline serves both without reading the file twice.
    """

    def __init__(self, keys="image", reader: str = "ITKReader"):
        super().__init__(keys)
        self.loader = LoadImage(reader=reader, image_only=True, ensure_channel_first=True)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            if isinstance(value, MetaTensor):
                if value.ndim != 4:
                    raise ValueError(f"'{key}' must be a channel-first 3D MetaTensor, got shape {tuple(value.shape)}")
                continue
            if isinstance(value, torch.Tensor):
                raise ValueError(f"'{key}' must be a path or a MetaTensor carrying its affine")
            d[key] = self.loader(value)
        return d
