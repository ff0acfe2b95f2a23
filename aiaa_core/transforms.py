"""Transforms of our own: the app's pipelines use them under both hosts (our server, stock MONAI Label), and
the server's model formats use them in uploaded MMARs and bundles (`aiaa.transforms.<name>`)."""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform
from monai.utils import ensure_tuple_rep

from .box_fit import FitToPointsBoxd
from .box_region import GrowInPointsBoxd
from .keys import PRED_BOX  # data key: the box outside which the pasted mask is all zero
from .mask_geometry import largest_component  # the one rule, shared with accuracy scoring
from .spleen_component import KeepPlausibleSpleend
from .tensors import bare
from .tissue_trim import TrimToTissued

# The public names; an uploaded config may name these transforms as `aiaa.transforms.<name>` (the server's
# allow-list, server/model_formats/names.py, looks them up in __all__ and nowhere else).
__all__ = [
    "PRED_BOX",
    "CropAroundPointsd",
    "FitToPointsBoxd",
    "GrowInPointsBoxd",
    "KeepPlausibleSpleend",
    "LoadImageOrTensord",
    "LogitsToInputGridd",
    "PasteCropd",
    "PointHeatmapsd",
    "RestoreGeometryd",
    "TrimToTissued",
    "crop_box",
    "largest_component",
    "point_heatmap",
]

ORIGINAL_AFFINE = "original_affine"  # data key suffix: the image's affine as loaded, before any transform
ORIGINAL_SHAPE = "original_shape"  # data key suffix: the image's spatial shape as loaded
AIR_HU = -1024.0  # what a crop holds beyond the image (CropAroundPointsd(pad_beyond_image=True))
ZOOM_BOX = "zoom_box"  # data key: a [start, end) box that CropAroundPointsd uses instead of its own (zoom-out)


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
            elif isinstance(value, torch.Tensor):
                raise ValueError(f"'{key}' must be a path or a MetaTensor carrying its affine")
            else:
                d[key] = self.loader(value)
            d[f"{key}_{ORIGINAL_AFFINE}"] = d[key].affine.clone()
            d[f"{key}_{ORIGINAL_SHAPE}"] = tuple(d[key].shape[1:])
        return d


class RestoreGeometryd(MapTransform):
    """Last post-transform: a channel-less mask plus the input's load-time affine in `<key>_meta_dict`.

    Stock MONAI Label's `Writer` takes the output geometry from there; our server ignores it and writes
    on the decoded input's own grid.
    """

    def __init__(self, keys="pred", ref_image: str = "image"):
        super().__init__(keys)
        self.ref_image = ref_image

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            mask = np.asarray(d[key])
            d[key] = mask[0] if mask.ndim == 4 else mask
            d[f"{key}_meta_dict"] = {"affine": d[f"{self.ref_image}_{ORIGINAL_AFFINE}"]}
        return d


def crop_box(
    points: np.ndarray,
    shape: Sequence[int],
    spacing: Sequence[float],
    padding_mm: float,
    min_size_mm: float = 0.0,
    beyond_image: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """[start, end) voxel box around `points` (N×3, [i, j, k]): their extent plus `padding_mm` on each
    side, at least `min_size_mm` wide, shifted (not shrunk) to stay inside the image where it fits.

    `beyond_image`: an axis shorter than the box is not shrunk to the image either; the box then
    reaches past the image on both sides (`CropAroundPointsd(pad_beyond_image=True)` pads it), so a
    20-slice scan gives a crop of the same shape in mm as a whole abdomen, not one stretched along k.
    """
    shape = np.asarray(shape, dtype=int)
    spacing = np.asarray(spacing, dtype=float)
    low, high = points.min(0), points.max(0)
    size = np.ceil(np.maximum(high - low + 1 + 2 * padding_mm / spacing, min_size_mm / spacing)).astype(int)
    if not beyond_image:
        size = np.minimum(size, shape)
    start = np.round((low + high) / 2 - size / 2).astype(int)
    return fit_in_image(start, size, shape), fit_in_image(start, size, shape) + size


def fit_in_image(start: np.ndarray, size: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """`start` shifted so that [start, start + size) lies inside the image, on the axes where it fits."""
    return np.where(size <= shape, np.clip(start, 0, np.maximum(shape - size, 0)), start)


class CropAroundPointsd(MapTransform):
    """Crop `keys` to the box around the points of `box_points` and resample the crop to `roi_size`.

    The click and extreme-point models work on this crop (a plain tensor: its grid is no longer the
    image's), not on the whole volume. Every points key in
    `points_keys` ([[i, j, k], ...] of the full image) is mapped into the resampled crop; the box and the
    full image shape are kept (`crop_box`, `image_shape`) so `PasteCropd` can put the mask back.
    A box given under `ZOOM_BOX` (a zoom-out pass of the click models) replaces the one around the points.
    """

    def __init__(
        self,
        keys,
        box_points: Sequence[str],
        points_keys: Sequence[str],
        roi_size: Sequence[int],
        padding_mm: float,
        min_size_mm: float = 0.0,
        modes: Sequence[str] = ("trilinear",),
        pad_beyond_image: bool = False,
        oversampling: int = 2,
    ):
        super().__init__(keys)
        self.oversampling = int(oversampling)  # a box over this many times roi_size is read every `step` voxels
        self.box_points, self.points_keys = tuple(box_points), tuple(points_keys)
        self.roi_size = tuple(int(s) for s in roi_size)
        self.padding_mm, self.min_size_mm = float(padding_mm), float(min_size_mm)
        self.modes = ensure_tuple_rep(modes, len(self.keys))
        self.pad_beyond_image = bool(pad_beyond_image)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        reference = d[self.keys[0]]
        shape = tuple(reference.shape[1:])
        spacing = np.asarray(reference.pixdim, dtype=float)[:3]
        points = np.concatenate([np.asarray(d[k], dtype=float).reshape(-1, 3) for k in self.box_points])
        start, end = crop_box(points, shape, spacing, self.padding_mm, self.min_size_mm, self.pad_beyond_image)
        if d.get(ZOOM_BOX) is not None:
            start, end = (np.asarray(v, dtype=int) for v in d[ZOOM_BOX])
        scale = np.asarray(self.roi_size) / (end - start)
        low, high = np.maximum(start, 0), np.minimum(end, shape)
        # A box over `oversampling` times the crop's size is read every `step` voxels (a zoomed-out box: a whole CT)
        step = np.maximum(1, (end - start) // (self.oversampling * np.asarray(self.roi_size)))
        region = tuple(slice(lo, hi, st) for lo, hi, st in zip(low, high, step, strict=True))
        for index, (key, mode) in enumerate(zip(self.key_iterator(d), self.modes, strict=False)):
            crop = bare(d[key])[(slice(None), *region)].float()
            if (low > start).any() or (high < end).any():  # beyond the image: air in the CT, 0 elsewhere
                before, after = np.round((low - start) / step), np.round((end - high) / step)
                pads = [int(v) for a in (2, 1, 0) for v in (before[a], after[a])]
                crop = F.pad(crop, pads, value=AIR_HU if index == 0 else 0.0)
            d[key] = F.interpolate(crop[None], size=self.roi_size, mode=mode)[0]
        for key in self.points_keys:
            p = np.asarray(d.get(key) or [], dtype=float).reshape(-1, 3)
            mapped = ((p - start + 0.5) * scale - 0.5).round().clip(0, np.asarray(self.roi_size) - 1)
            d[key] = mapped.astype(int).tolist()
        d["crop_box"] = (start.tolist(), end.tolist())
        d["image_shape"] = list(shape)
        return d


class PasteCropd(MapTransform):
    """Resample the crop's logits back to the box size, take the argmax and paste it into a full-size mask.

    Works in uint8 outside the box, so a click never allocates a full-size float volume; the mask is
    Fortran-ordered ([i, j, k] with i fastest, the order of NIfTI's voxel data) so it is written without
    a transpose. Adds the box as AIAA's `crop` ([[i0, i1], [j0, j1], [k0, k1]], end exclusive) to the
    result JSON, and as `pred_box` to the data.
    """

    def __init__(self, keys="pred", result_key: str = "result"):
        super().__init__(keys)
        self.result_key = result_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        start, end = (np.asarray(v) for v in d["crop_box"])
        shape = np.asarray(d["image_shape"])
        low, high = np.maximum(start, 0), np.minimum(end, shape)  # the part of the box inside the image
        box = tuple(slice(s, e) for s, e in zip(low, high, strict=True))
        inside = tuple(slice(s, e) for s, e in zip(low - start, high - start, strict=True))
        for key in self.key_iterator(d):
            mask = np.zeros(d["image_shape"], dtype=np.uint8, order="F")
            size = tuple(int(s) for s in end - start)
            logits = bare(d[key]).float()
            if logits.shape[0] > 2:
                mask[box] = labels_of(resize_logits(logits, size))[inside]
            else:  # resample only around the object: a zoomed-out box can be 10⁸ voxels
                score = logits[1] - logits[0] if logits.shape[0] == 2 else logits[0]
                coarse = np.argwhere(score.numpy() > 0)
                if coarse.size:
                    ratio = np.asarray(size) / np.asarray(score.shape)
                    first = np.floor((coarse.min(0) - 0.5) * ratio - 0.5).astype(int)
                    last = np.ceil((coarse.max(0) + 1.5) * ratio - 0.5).astype(int) + 1
                    first, last = np.maximum(first, low - start), np.minimum(last, high - start)
                    if (last > first).all():
                        region = tuple(slice(s, e) for s, e in zip(start + first, start + last, strict=True))
                        mask[region] = (resize_region(score, size, first, last) > 0).numpy()
            d[key] = mask[None]
        crop = [[int(s), int(e)] for s, e in zip(low, high, strict=True)]
        d[self.result_key] = {**d.get(self.result_key, {}), "crop": crop}
        d[PRED_BOX] = crop
        return d


def resize_logits(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Trilinear resize of C×X×Y×Z logits; two classes are resized as one score (logit1 − logit0), which
    gives the same argmax (interpolation is linear) for half the work."""
    if logits.shape[0] == 2:
        logits = logits[1:] - logits[:1]
    return F.interpolate(logits[None], size=tuple(size), mode="trilinear")[0]


def resize_region(score: torch.Tensor, size: Sequence[int], first: Sequence[int], last: Sequence[int]) -> torch.Tensor:
    """Voxels [first, last) of `score` (X×Y×Z) resized to `size`, as `F.interpolate(..., "trilinear")`
    (align_corners False) gives them, computed one axis at a time for that region only."""
    out = score
    for axis in (2, 1, 0):
        n = score.shape[axis]
        positions = (torch.arange(first[axis], last[axis], dtype=torch.float64) + 0.5) * n / size[axis] - 0.5
        positions = positions.clamp(0, n - 1)
        below = positions.floor().long()
        above = (below + 1).clamp(max=n - 1)
        weight = (positions - below).float().reshape([-1 if a == axis else 1 for a in range(3)])
        out = out.index_select(axis, below) * (1 - weight) + out.index_select(axis, above) * weight
    return out


def labels_of(scores: torch.Tensor) -> np.ndarray:
    """Argmax of C×... logits as uint8 labels; a single channel is the score of class 1 over class 0."""
    labels = scores[0] > 0 if scores.shape[0] == 1 else scores.argmax(0)
    return labels.numpy().astype(np.uint8)


class LogitsToInputGridd(MapTransform):
    """Segmentation logits on the working grid → the largest connected (binary) mask on the input's grid.

    Equivalent to inverting Spacingd/Orientationd on the logits, then argmax and keeping the largest
    component, but done only where the object is: the largest component is found on the coarse grid,
    and only its bounding box (plus one coarse voxel) is resampled (trilinear, from the affines) onto
    the input grid. A 512×512×100 CT costs a few hundred thousand samples instead of 2×26 M, and the
    mask comes back Fortran-ordered uint8 with `pred_box` set.
    """

    def __init__(self, keys="pred", ref_image: str = "image", margin: int = 1):
        super().__init__(keys)
        self.ref_image, self.margin = ref_image, int(margin)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        working_affine = np.asarray(torch.as_tensor(d[self.ref_image].affine), dtype=float)
        input_affine = np.asarray(torch.as_tensor(d[f"{self.ref_image}_{ORIGINAL_AFFINE}"]), dtype=float)
        shape = tuple(int(s) for s in d[f"{self.ref_image}_{ORIGINAL_SHAPE}"])
        index_to_working = np.linalg.inv(working_affine) @ input_affine  # input [i, j, k] → working index
        for key in self.key_iterator(d):
            logits = bare(d[key]).float()
            score = logits[1:].max(0).values - logits[0]  # > 0 where the argmax is not the background
            coarse = np.argwhere(largest_component(score.numpy() > 0))
            mask = np.zeros(shape, dtype=np.uint8, order="F")
            box = [[0, 0]] * 3
            if coarse.size:
                low, high = coarse.min(0) - self.margin, coarse.max(0) + self.margin
                start, end = input_box(index_to_working, low, high, shape)
                if (end > start).all():
                    sampled = sample_on_grid(score, index_to_working, start, end)
                    region = tuple(slice(s, e) for s, e in zip(start, end, strict=True))
                    mask[region] = largest_component(sampled.numpy() > 0)
                    box = [[int(s), int(e)] for s, e in zip(start, end, strict=True)]
            d[key] = mask[None]
            d[PRED_BOX] = box
        return d


def input_box(
    index_to_working: np.ndarray, low: np.ndarray, high: np.ndarray, shape: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """[start, end) of the input voxels that map inside the working-grid box [low, high] (inclusive)."""
    corners = np.array([[*corner, 1.0] for corner in itertools.product(*zip(low, high, strict=True))])
    inputs = (np.linalg.inv(index_to_working) @ corners.T)[:3]
    start = np.clip(np.floor(inputs.min(1)).astype(int), 0, shape)
    end = np.clip(np.ceil(inputs.max(1)).astype(int) + 1, 0, shape)
    return start, end


def sample_on_grid(volume: torch.Tensor, index_to_volume: np.ndarray, start, end) -> torch.Tensor:
    """Trilinear samples of `volume` (X×Y×Z) at the input voxels [start, end), edges clamped."""
    axes = [torch.arange(s, e, dtype=torch.float64) for s, e in zip(start, end, strict=True)]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)
    matrix = torch.as_tensor(index_to_volume, dtype=torch.float64)
    coords = grid @ matrix[:3, :3].T + matrix[:3, 3]
    size = torch.tensor(volume.shape, dtype=torch.float64)
    normalised = (coords * 2 / (size - 1).clamp(min=1) - 1).flip(-1).float()  # grid_sample wants (z, y, x)
    sampled = F.grid_sample(
        volume[None, None].float(), normalised[None], mode="bilinear", padding_mode="border", align_corners=True
    )
    return sampled[0, 0]


def point_heatmap(shape: Sequence[int], points: Sequence[Sequence[int]], sigma: float) -> np.ndarray:
    """Max of unit-peak Gaussians (σ in voxels) at the points, computed only within 3σ of each point."""
    heat = np.zeros(tuple(shape), dtype=np.float32)
    radius = int(np.ceil(3 * sigma))
    for point in points:
        point = np.asarray(point, dtype=int)
        low, high = np.maximum(point - radius, 0), np.minimum(point + radius + 1, shape)
        if (high <= low).any():
            continue
        axes = [
            np.exp(-((np.arange(lo, hi) - c) ** 2) / (2 * sigma**2)) for lo, hi, c in zip(low, high, point, strict=True)
        ]
        window = tuple(slice(lo, hi) for lo, hi in zip(low, high, strict=True))
        heat[window] = np.maximum(heat[window], np.einsum("i,j,k->ijk", *axes))
    return heat


class PointHeatmapsd(MapTransform):
    """Append one heatmap channel per points key to `keys` (the click models' guidance input)."""

    def __init__(self, keys, points_keys: Sequence[str], sigma: float):
        super().__init__(keys)
        self.points_keys, self.sigma = tuple(points_keys), float(sigma)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        for key in self.key_iterator(d):
            image = bare(d[key]).float()
            maps = [point_heatmap(image.shape[1:], d.get(k) or [], self.sigma) for k in self.points_keys]
            d[key] = torch.cat([image, torch.from_numpy(np.stack(maps))])
        return d
