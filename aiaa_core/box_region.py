"""Extreme points on real CT: complete the network's mask with an intensity region grown inside the points' box.

The extreme-points network (trained on phantoms) under-segments large homogeneous organs on real CT
(bench/results/accuracy.md). The same agreement-checked region grow as deepgrow's (`click_region`) corrects
it: seeded at the deepest voxel of the network's mask (its most confident core, away from the boundary's
partial volume), grown over the whole crop but rejected when more than `MAX_OUTSIDE_SHARE` of it lies
beyond the points' box (the extreme points bound the object, so such a region has leaked into a neighbour
of the same intensity), then limited to the box and added only when the seed's tissue is homogeneous and
the region agrees with the network (`accept_region`). Deepgrow's lower bound on the region's size
(`MIN_GROWTH`: one barely larger than the network's mask adds risk only) does not apply here: inside the
points' box a region cannot run far, and a network 20 % short of a liver or spleen is what the step is for.
A post-transform after `FitToPointsBoxd`, so exported MMARs/bundles run it too (its arguments are kept as
attributes for the exporter).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.transforms import MapTransform
from scipy import ndimage

from .box_fit import OUTSIDE_SCORE
from .click_region import accept_region, check_window, grow_region, window_to_hu
from .keys import data_key
from .tensors import bare

REGION_SCORE = 4.0  # the logit margin given to the union's inside (and minus it outside), as deepgrow's
MAX_OUTSIDE_SHARE = 0.25  # the points bound the object: a region with over a quarter beyond their box leaked
BOX_MIN_GROWTH = 1.0  # any region larger than the network's mask may complete it: the box bounds a leak


class GrowInPointsBoxd(MapTransform):
    """Union of the mask (score > 0) with the intensity region grown from its deepest voxel within the
    points' box (one voxel of tolerance), when `accept_region` agrees. `window` is the CT window that
    scaled `image_key`'s first channel to [0, 1] (so its HU can be read back)."""

    def __init__(
        self,
        keys="pred",
        image_key: str = "image",
        points_key: str = "points",
        window: Sequence[float] = (-400.0, 600.0),
    ):
        super().__init__(keys)
        self.image_key, self.points_key = data_key(image_key, "image_key"), data_key(points_key, "points_key")
        self.window = check_window(window)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        points = np.asarray(d.get(self.points_key) or [], dtype=int).reshape(-1, 3)
        if len(points) < 2 or self.image_key not in d:
            return d
        image = bare(d[self.image_key]).float()
        hu = window_to_hu(image[0].numpy(), self.window)
        for key in self.key_iterator(d):
            d[key] = grow_in_box(bare(d[key]).float(), hu, points)
        return d


def grow_in_box(logits: torch.Tensor, hu: np.ndarray, points: np.ndarray) -> torch.Tensor:
    """`logits` (two channels or one score) with the accepted region added inside the points' box, or as given."""
    score = logits[1] - logits[0] if logits.shape[0] == 2 else logits[0]
    shape = np.asarray(score.shape)
    low = np.clip(points.min(0) - 1, 0, shape - 1)
    high = np.clip(points.max(0) + 2, 1, shape)  # exclusive
    box = tuple(slice(int(lo), int(hi)) for lo, hi in zip(low, high, strict=True))
    network = score[box].numpy() > 0
    if not network.any():
        return logits
    depth = ndimage.distance_transform_edt(network)
    seed = np.unravel_index(int(np.argmax(depth)), depth.shape)
    grown = grow_region(hu, [tuple(int(c) + int(lo) for c, lo in zip(seed, low, strict=True))])
    if grown is None:
        return logits
    region = grown[box]
    if region.sum() < (1.0 - MAX_OUTSIDE_SHARE) * grown.sum() or not accept_region(region, network, BOX_MIN_GROWTH):
        return logits
    union = torch.from_numpy(region | network)
    fitted = torch.full_like(score, OUTSIDE_SCORE)
    fitted[box] = torch.where(union, REGION_SCORE, -REGION_SCORE)
    return torch.stack([torch.zeros_like(fitted), fitted])
