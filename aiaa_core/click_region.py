"""An intensity region grown from the clicks, to correct the click network where it under-segments.

The click network (a small 3D UNet trained mostly on phantoms) predicts a blob of roughly the same share
of its crop whatever the object's size (bench/results/accuracy.md), so a liver or a spleen comes back a
fraction of its size. Homogeneous organs are what a seeded region grow does well: the connected voxels of
the clicked object's intensity (robust statistics around the first click, on a smoothed crop wider than
the network's). It is used only when it agrees with the network (`accept_region`): most of the smaller
of the two lies in the other, and the region is clearly larger than the network's mask (what it is for)
but not many times larger (a leak into a neighbour of the same intensity); and only on homogeneous
tissue (not a gas-filled stomach or a textured kidney). Background clicks cut it: where both lie in one
region, a watershed of the region's distance map from the clicks splits it at its narrowest (a leak's
bridge) and keeps the foreground clicks' side.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

SEED_RADIUS = 2  # voxels around the first click whose intensities define the object's
MAX_SIGMA_HU = 25.0  # a robust spread above this: a textured object, left to the network
MIN_TOLERANCE_HU = 20.0  # the band is at least ± this (CT noise after smoothing)
SIGMA_TOLERANCE = 2.5  # the band is ± this many robust spreads around the median
EDGE_TOLERANCE = 3.0  # the rim taken back after the grow: within this many band widths of the median
MIN_AGREEMENT = 0.5  # share of the smaller of the region and the network's mask that the other holds
MIN_GROWTH = 1.3  # the region corrects under-segmentation: one barely larger than the network's adds risk only
MAX_GROWTH = 8.0  # a region over this many times the network's mask is a leak


def grow_region(
    hu: np.ndarray, foreground: Sequence[Sequence[int]], background: Sequence[Sequence[int]] = ()
) -> np.ndarray | None:
    """The connected voxels of `hu` (X×Y×Z) with the first foreground click's intensity that hold a
    foreground click, cut by the background clicks; None for a textured object or an empty region."""
    if not foreground:
        return None
    smooth = ndimage.uniform_filter(np.asarray(hu, dtype=np.float32), size=3)
    tissue = tissue_band(smooth, foreground[0])
    if tissue is None:
        return None
    median, tolerance = tissue
    band = np.abs(smooth - median) <= tolerance
    band = ndimage.binary_opening(band)  # cut one-voxel bridges to neighbours
    components, _ = ndimage.label(band)
    clicked = {int(components[tuple(p)]) for p in np.asarray(foreground, dtype=int)} - {0}
    if not clicked:
        return None
    region = np.isin(components, sorted(clicked))
    # The smoothing and the band leave out the object's partial-volume rim: take it back (one voxel).
    rim = np.abs(np.asarray(hu, dtype=np.float32) - median) <= EDGE_TOLERANCE * tolerance
    region = ndimage.binary_dilation(region, mask=rim) | region
    inside = [p for p in np.asarray(background, dtype=int).reshape(-1, 3) if region[tuple(p)]]
    return split_off(region, foreground, inside) if inside else region


def tissue_band(smooth: np.ndarray, seed: Sequence[int]) -> tuple[float, float] | None:
    """(median, tolerance) in HU of the tissue around `seed` on the smoothed crop `smooth`: robust
    statistics of the voxels within `SEED_RADIUS`; None where they are textured (spread over `MAX_SIGMA_HU`)."""
    window = tuple(slice(max(0, int(c) - SEED_RADIUS), int(c) + SEED_RADIUS + 1) for c in seed)
    values = smooth[window].ravel()
    median = float(np.median(values))
    sigma = 1.4826 * float(np.median(np.abs(values - median)))
    if sigma > MAX_SIGMA_HU:
        return None
    return median, max(SIGMA_TOLERANCE * sigma, MIN_TOLERANCE_HU)


def check_window(window: Sequence[float]) -> list[float]:
    """A CT window (low, high HU) that scaled a crop to [0, 1], so a transform can read its HU back
    (uploaded configs set it too: two finite numbers, low < high)."""
    low, high = (float(w) for w in window) if len(window) == 2 else (math.nan, math.nan)
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError("'window' must be two finite HU values, low < high")
    return [low, high]


def window_to_hu(scaled: np.ndarray, window: Sequence[float]) -> np.ndarray:
    """The HU of a crop that the CT `window` scaled to [0, 1] (clipped voxels come back at its ends)."""
    return scaled * (window[1] - window[0]) + window[0]


def split_off(region: np.ndarray, foreground, background) -> np.ndarray:
    """The foreground clicks' part of `region` after a watershed (on the distance to its boundary) seeded
    by the foreground (1) and background (2) clicks: the cut runs along the region's narrow parts."""
    markers = np.zeros(region.shape, dtype=np.int32)
    for label, points in ((1, foreground), (2, background)):
        for p in np.asarray(points, dtype=int).reshape(-1, 3):
            if region[tuple(p)]:
                markers[tuple(p)] = label
    depth = ndimage.distance_transform_edt(region)
    return watershed(-depth, markers, mask=region) == 1


def accept_region(region: np.ndarray | None, network: np.ndarray, min_growth: float = MIN_GROWTH) -> bool:
    """Does the grown region agree with the network's mask (both on one grid) well enough to be added to it?
    `min_growth`: the smallest region, as a multiple of the network's mask, worth the risk of adding."""
    if region is None or not network.any():
        return False
    agreement = (region & network).sum() / min(region.sum(), network.sum())
    growth = region.sum() / network.sum()
    return bool(agreement >= MIN_AGREEMENT and min_growth <= growth <= MAX_GROWTH)
