"""Transforms that let an uploaded pipeline run on the image the server decoded, and come back on its grid.

AIAA pipelines start by loading a file and end by restoring the mask onto the input's geometry; the
server hands the task a decoded channel-first MetaTensor and writes the mask on the input grid itself.
These adapters sit at those two ends; everything in between is the upload's own MONAI pipeline.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd, InvertibleTransform, MapTransform

from aiaa_core import transforms as app_transforms  # the app's transforms are the server's too

__all__ = ["LoadServerImaged", "Restored"]

INPUT_SHAPE = "input_shape"  # data key suffix: the decoded image's spatial shape


class LoadServerImaged(app_transforms.LoadImageOrTensord):
    """What a config's `LoadImaged` becomes: the decoded image (or a file path), shaped as `LoadImaged`
    gives it, i.e. without a channel axis for a one-channel volume unless `ensure_channel_first`, so the
    config's own `AddChanneld`/`EnsureChannelFirstd` that follows does what it always did."""

    def __init__(self, keys="image", ensure_channel_first: bool = False):
        super().__init__(keys)
        self.ensure_channel_first = ensure_channel_first

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = super().__call__(data)
        for key in self.key_iterator(d):
            image = d[key]  # a session's cached tensor: never modify it, only wrap its data
            shape = tuple(image.shape[1:])
            squeeze = not self.ensure_channel_first and image.shape[0] == 1
            image = image[0] if squeeze else MetaTensor(image.as_tensor(), meta=dict(image.meta))
            image.meta.update(  # as MONAI's readers record them
                spatial_shape=np.asarray(shape),
                original_affine=image.affine.clone(),
                original_channel_dim="no_channel" if squeeze else 0,
            )
            d[key], d[f"{key}_{INPUT_SHAPE}"] = image, shape
            d[f"{key}_meta_dict"] = dict(image.meta)  # the load-time meta data older pipelines read (deepgrow)
        return d


class Restored(MapTransform):
    """AIAA's `Restored`: undo every invertible pre-transform (Orientationd, Spacingd, crops, resizes...)
    on `keys`, so the prediction lands on `ref_image`'s input grid. MONAI's `Invertd` does the work.

    `nearest_interp` (default True, for a label mask; False resamples logits with the forward modes).
    `when_off_grid`: do nothing when the prediction already has the input's shape (the task adds such
    a `Restored` to configs that have none, after post-transforms that may have restored it already).
    The task binds the pre-transforms it ran (`bind`) before the first call.
    """

    def __init__(
        self,
        keys="pred",
        ref_image: str = "image",
        nearest_interp: bool | None = None,
        mode: str | None = None,
        meta_key_postfix: str = "meta_dict",
        allow_missing_keys: bool = False,
        when_off_grid: bool = False,
    ):
        super().__init__(keys, allow_missing_keys)
        self.when_off_grid = when_off_grid
        self.ref_image = ref_image
        self.nearest_interp = nearest_interp if nearest_interp is not None else mode in (None, "nearest")
        self._undo: list = []

    def bind(self, pre_transforms: Sequence) -> None:
        self._undo = [t for t in pre_transforms if isinstance(t, InvertibleTransform)]

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        reference = d.get(self.ref_image)
        if not self._undo or not getattr(reference, "applied_operations", None):
            return d
        spatial = reference.ndim - 1
        input_shape = tuple(d.get(f"{self.ref_image}_{INPUT_SHAPE}", ()))
        keys = [
            k for k in self.key_iterator(d) if not (self.when_off_grid and np.shape(d[k])[-spatial:] == input_shape)
        ]
        if not keys:
            return d
        squeezed = []
        for key in keys:
            value = d[key] if isinstance(d[key], MetaTensor) else MetaTensor(torch.as_tensor(np.asarray(d[key])))
            if value.ndim == spatial:  # channel-less (after SqueezeDimd): invert with a channel axis
                value, _ = value[None], squeezed.append(key)
            d[key] = value
        d = Invertd(keys, Compose(self._undo), orig_keys=self.ref_image, nearest_interp=self.nearest_interp)(d)
        for key in squeezed:
            d[key] = d[key][0]
        return d
