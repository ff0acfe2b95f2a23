"""Trim a click model's mask to the clicked tissue: drop the voxels its core's tissue cannot be.

On real CT the click networks (trained mostly on phantoms) spill over their object into fat, lung or gas
next to it: on `example_ct` the extreme-points liver mask takes voxels of −150 HU at the lung base, in a
homogeneous ~45 HU organ. The mask's own core says what the object is made of: the robust intensity band
around its deepest voxel (`click_region.tissue_band`, the statistics the region grow uses). Where the core
is homogeneous, voxels beyond `EDGE_TOLERANCE` band widths of it (the grow's rim rule) are dropped, the part
connected to the core is kept, and one voxel around it is given back (partial volume with the neighbour).
Hollow and mixed organs are left whole: a hole the trim opens inside the mask in any plane (the gas or food
in a stomach, a vessel in a liver) is filled again, so only what lies on the mask's outside goes. A textured
core (a kidney, a bowel loop) is left to the network, and so are an air-filled object (a core under
`MIN_CORE_HU`: lung, a gas-filled lumen) and a mask the trim would halve (its core is then not the
object's tissue).

A post-transform on the crop's logits (`TrimToTissued`), so exported MMARs and bundles run it too.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.transforms import MapTransform
from scipy import ndimage

from .click_region import EDGE_TOLERANCE, SEED_RADIUS, check_window, tissue_band, window_to_hu
from .keys import data_key
from .tensors import bare

DROPPED_SCORE = -4.0  # the logit margin given to trimmed voxels (the region steps' margin)
# A trim that would drop this share of the mask or more means the core is not the object's tissue (the gas
# of a hollow organ's lumen, say): the mask is left as it is. The spills it is for are a minority.
MAX_DROPPED_SHARE = 0.5
# 4-connectivity within the planes across each axis: a hole filled with one of these is a hole in a plane.
IN_PLANE = [np.stack([np.zeros((3, 3), bool), ndimage.generate_binary_structure(2, 1), np.zeros((3, 3), bool)], axis)
            for axis in range(3)]  # fmt: skip
MIN_CORE_HU = -200.0  # a core below this is gas or lung: an air-filled object, whose spills are not fat or air


class TrimToTissued(MapTransform):
    """The mask (score > 0) of `keys` trimmed to the tissue of its core (`tissue_part`). `window` is the CT
    window that scaled `image_key`'s first channel to [0, 1] (so its HU can be read back)."""

    def __init__(self, keys="pred", image_key: str = "image", window: Sequence[float] = (-400.0, 600.0)):
        super().__init__(keys)
        self.image_key = data_key(image_key, "image_key")
        self.window = check_window(window)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        if self.image_key not in d:
            return d
        image = bare(d[self.image_key]).float()
        hu = window_to_hu(image[0].numpy(), self.window)
        for key in self.key_iterator(d):
            logits = bare(d[key]).float()
            if tuple(logits.shape[1:]) == hu.shape:  # only on the image's own grid
                d[key] = trim_to_tissue(logits, hu)
        return d


def trim_to_tissue(logits: torch.Tensor, hu: np.ndarray) -> torch.Tensor:
    """`logits` (two channels or one score) with the voxels outside the core's tissue set to background."""
    score = logits[1] - logits[0] if logits.shape[0] == 2 else logits[0]
    mask = score.numpy() > 0
    kept = tissue_part(mask, hu)
    if kept is None:
        return logits
    trimmed = torch.where(torch.from_numpy(mask & ~kept), torch.tensor(DROPPED_SCORE), score)
    return torch.stack([torch.zeros_like(trimmed), trimmed])


def tissue_part(mask: np.ndarray, hu: np.ndarray) -> np.ndarray | None:
    """The part of `mask` of its core's tissue, holes in any plane filled back; None when nothing is
    dropped, the mask is empty, its core is textured or air, or the part is not most of the mask."""
    if not mask.any():
        return None
    voxels = np.argwhere(mask)  # work within the mask's box (a voxel wider): the cost follows the object
    box = tuple(slice(max(int(lo) - 1, 0), int(hi) + 2) for lo, hi in zip(voxels.min(0), voxels.max(0), strict=True))
    inside, values = mask[box], np.asarray(hu[box], dtype=np.float32)
    step = 2 if min(inside.shape) >= 8 else 1  # the core is found on every other voxel: 8× less work
    depth = ndimage.distance_transform_edt(inside[::step, ::step, ::step])
    seed = tuple(int(c) * step for c in np.unravel_index(int(np.argmax(depth)), depth.shape))
    near = tuple(slice(max(c - SEED_RADIUS - 1, 0), c + SEED_RADIUS + 2) for c in seed)  # smoothed only here
    centre = [c - n.start for c, n in zip(seed, near, strict=True)]
    tissue = tissue_band(ndimage.uniform_filter(values[near], size=3), centre)
    if tissue is None or tissue[0] < MIN_CORE_HU:
        return None
    median, tolerance = tissue
    same = inside & (np.abs(values - median) <= EDGE_TOLERANCE * tolerance)
    if np.array_equal(same, inside) or not same[seed]:
        return None
    components, _ = ndimage.label(same, np.ones((3, 3, 3)))
    # Its boundary voxels are partial volume with the neighbour (the trimmed tissue): one voxel is given back.
    kept = ndimage.binary_dilation(components == components[seed], np.ones((3, 3, 3))) & inside
    for plane in IN_PLANE:  # give back what the trim opened inside the mask, plane by plane
        kept |= ndimage.binary_fill_holes(kept, structure=plane) & inside
    if kept.sum() <= (1.0 - MAX_DROPPED_SHARE) * inside.sum() or np.array_equal(kept, inside):
        return None
    whole = np.zeros_like(mask)
    whole[box] = kept
    return whole
