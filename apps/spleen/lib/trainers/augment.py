"""Training-only augmentations for real-CT robustness: contrast phase / calibration, and slice thickness.

Both act on the segmentation's working grid (RAS, 3 mm), where axis 2 is the patient's head-foot axis.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import MapTransform, Randomizable

from aiaa_core.transforms import bare


class RandHUShiftScaled(Randomizable, MapTransform):
    """Shift (±`shift` HU) and scale (1 ± `scale`, about `centre` HU) the CT before its window is applied.

    A contrast phase or a scanner's calibration moves soft tissue by tens of HU (spleen ~30 HU unenhanced,
    up to ~165 HU portal-venous); the model must find the organ by its context, not one HU band.
    """

    def __init__(self, keys="image", shift: float = 80.0, scale: float = 0.15, centre: float = 40.0, prob=0.8):
        MapTransform.__init__(self, keys)
        self.shift, self.scale, self.centre, self.prob = float(shift), float(scale), float(centre), float(prob)
        self._apply, self._shift, self._scale = False, 0.0, 1.0

    def randomize(self, data=None) -> None:
        self._apply = self.R.random() < self.prob
        self._shift = self.R.uniform(-self.shift, self.shift)
        self._scale = 1.0 + self.R.uniform(-self.scale, self.scale)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        self.randomize()
        if not self._apply:
            return d
        for key in self.key_iterator(d):
            image = bare(d[key]).float()
            d[key] = (image - self.centre) * self._scale + self.centre + self._shift
        return d


class RandThickSlicesd(Randomizable, MapTransform):
    """What a scan with `thickness` mm slices looks like after resampling to the working spacing.

    Each slice averages its slab (a Gaussian of FWHM ≈ the thickness along axis 2), the volume is sampled
    every `thickness` mm and linearly interpolated back: thin structures fade and the poles of an organ
    blur across slices, as in a 5–8 mm clinical series. The label is left as is (the true organ).
    """

    def __init__(self, keys="image", spacing: float = 3.0, thickness=(3.0, 8.0), prob: float = 0.5):
        MapTransform.__init__(self, keys)
        self.spacing, self.thickness, self.prob = float(spacing), tuple(float(t) for t in thickness), float(prob)
        self._thickness = 0.0

    def randomize(self, data=None) -> None:
        apply = self.R.random() < self.prob
        self._thickness = self.R.uniform(*self.thickness) if apply else 0.0

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        self.randomize()
        if self._thickness <= self.spacing:
            return d
        for key in self.key_iterator(d):
            d[key] = thick_slices(bare(d[key]).float(), self._thickness / self.spacing)
        return d


def thick_slices(volume: torch.Tensor, ratio: float) -> torch.Tensor:
    """C×X×Y×Z volume as if sliced `ratio` times thicker along Z, back on its own grid."""
    depth = volume.shape[-1]
    sigma = np.sqrt(ratio**2 - 1.0) / 2.355  # voxels: FWHM of the slab on top of the existing one
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = torch.exp(-(torch.arange(-radius, radius + 1, dtype=torch.float32) ** 2) / (2 * sigma**2))
    channels = volume.shape[0]
    flat = volume.reshape(-1, 1, depth)
    blurred = F.conv1d(F.pad(flat, (radius, radius), mode="replicate"), (taps / taps.sum())[None, None])
    slices = max(2, int(round(depth / ratio)))
    coarse = F.interpolate(blurred, size=slices, mode="linear", align_corners=False)
    return F.interpolate(coarse, size=depth, mode="linear", align_corners=False).reshape(channels, *volume.shape[1:])
