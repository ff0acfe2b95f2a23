"""The memory budget: every grid a request will create is costed, and refused with 413, before it exists.

A small upload can ask for a huge allocation: a 90-byte 16³ volume at 100 mm spacing becomes a 501³ grid
when a model resamples it to 3 mm; a 1 KB DICOM can claim 20000×20000 pixels. So the voxel limit on the
upload is not enough: each request gets a `MemoryLedger` holding its share of the server's budget
(`memory_budget_bytes` shared by the scheduler's workers, see `request_limit`), and charges it, before
allocating, with

* the decoded image, from its header (`image_reading.read_image` charges it before decoding pixels), and
* the model's pipeline, from the image's grid and the task's pre-transforms (`pipeline_bytes`): the
  transforms are walked for the grids they create (Orientation, Spacing, Resize, Zoom, pads, crops), so
  the estimate needs no allocation and costs microseconds (the click path stays fast).

Costs per voxel were measured with the app's models (peak RSS growth over one `run_model` call, each case
in a fresh process): ~17 bytes per input voxel for a whole-volume pipeline (int16 input, 2 classes), ~3.4
for a click, ~53 per voxel of a resampled working grid (151³ and 226³ grids) and ~32 when the network
runs on the input grid itself; the constants below round those up (64 per working voxel for 2 classes).
Only the scheduler's lanes run requests, at most `interactive_workers + batch_workers` at once, so the
sum of their ledgers never exceeds the budget.
"""

from __future__ import annotations

import logging
import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import nibabel as nib
import numpy as np
from monai import transforms as mt

from .errors import PayloadTooLarge
from .image_headers import ImageHeader

logger = logging.getLogger(__name__)

FLOAT_BYTES = 4
MAX_EXTENT_MM = 1e15
"""Extents beyond this (a hostile header's 1e308 mm spacing) are costed as this: already far over any budget."""
MASK_BYTES_PER_VOXEL = 2
"""The uint8 mask on the input grid and its encoded copy."""


def grid_bytes_per_voxel(channels: int) -> int:
    """A working grid: its float input, the network's `channels` outputs and the inferer's/resampler's
    buffers (sliding-window sums and counts, the sampling coordinates): 64 for two classes (measured 53)."""
    return FLOAT_BYTES * (10 + 3 * channels)


def gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.0f} MiB"


def request_limit(memory_budget_bytes: int, interactive_workers: int, batch_workers: int, *, batch: bool) -> int:
    """One request's share: half the budget for each of the scheduler's lanes, split among its workers (all of
    it for the only lane with workers), so the requests that can run at once never sum past the budget.

    Halves, not an even split per worker: a whole-volume segmentation needs several times a click's memory
    (the app's segmentation of an uploaded 512×512×1000 CT is costed at 5.5–5.7 GiB: with the defaults, 6 GiB
    for the one segmentation worker and 3 GiB for each of the two click workers, enough for a one-shot click
    on that CT, 2.5 GiB)."""
    workers = (batch_workers if batch else interactive_workers) or 1
    both_lanes = interactive_workers > 0 and batch_workers > 0
    return (memory_budget_bytes // 2 if both_lanes else memory_budget_bytes) // workers


Plan = Callable[[ImageHeader], tuple[int, str]]
"""What a request will allocate for an image, from its header: bytes and a description (`pipeline_bytes`)."""


class MemoryLedger:
    """What one request may still allocate; `charge` before allocating, 413 when it would not fit.

    With a `plan` (the model's pipeline), charging an image's header also charges what the pipeline will
    make of it, so a request whose grids would not fit is refused before a single pixel is decoded.
    """

    def __init__(self, limit_bytes: int, plan: Plan | None = None):
        self.limit = int(limit_bytes)
        self.plan = plan
        self.used = 0

    def charge(self, nbytes: int, what: str) -> None:
        """Count `nbytes` for `what` (e.g. "the decoded 512×512×300 image"), or refuse the request."""
        nbytes = int(nbytes)
        if self.used + nbytes > self.limit:
            already = f" on top of {gib(self.used)} already in use for it" if self.used else ""
            raise PayloadTooLarge(
                f"This request would need about {gib(nbytes)} of memory for {what}{already}; this server's "
                f"limit is {gib(self.limit)} per request. Send a smaller image (or one at a coarser spacing)."
            )
        self.used += nbytes

    def charge_image(self, header: ImageHeader, *, decoded: bool = False) -> None:
        """Charge an image about to be decoded (unless `decoded`: a session's) and the plan's grids for it."""
        if not decoded:
            self.charge(header.nbytes, f"the decoded {header.dims()} image")
        if self.plan is not None:
            self.charge(*self.plan(header))


# ------------------------------------------------------------------------------------- grid planning


@dataclass(frozen=True)
class Grid:
    """A spatial grid as the pipeline sees it: shape and spacing per axis, and the voxel-to-RAS rotation."""

    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    rotation: tuple[tuple[float, ...], ...]  # unit direction columns, RAS

    @property
    def voxels(self) -> int:
        return math.prod(self.shape)

    def dims(self) -> str:
        return "×".join(str(n) for n in self.shape)


def image_grid(header: ImageHeader) -> Grid:
    """The header's grid in RAS, as the pipeline's MetaTensor carries it (2D: a unit third axis)."""
    dim = len(header.size)
    direction = np.eye(3)
    direction[:dim, :dim] = np.reshape(header.direction, (dim, dim))
    rotation = np.diag([-1.0, -1.0, 1.0]) @ direction  # LPS → RAS
    spacing = (*header.spacing, 1.0, 1.0)[:3]
    shape = (*header.size, 1, 1)[:3]
    return Grid(tuple(int(n) for n in shape), tuple(float(s) for s in spacing), tuple(map(tuple, rotation)))


def _per_axis(value, n: int) -> list:
    values = list(value) if isinstance(value, Sequence | np.ndarray) else [value] * n
    return (values + values[-1:] * n)[:n] if values else [None] * n


def _orient(grid: Grid, axcodes: str | None) -> Grid:
    if not axcodes:
        return grid
    affine = np.eye(4)
    affine[:3, :3] = np.array(grid.rotation)  # the axes' directions decide the permutation, not their spacing
    current = nib.orientations.io_orientation(affine)
    target = nib.orientations.axcodes2ornt(axcodes)
    order = np.argsort(nib.orientations.ornt_transform(current, target)[:, 0].astype(int))
    rotation = np.array(grid.rotation)[:, order]
    return Grid(tuple(grid.shape[i] for i in order), tuple(grid.spacing[i] for i in order), tuple(map(tuple, rotation)))


def _respace(grid: Grid, pixdim, diagonal: bool, scale_extent: bool) -> Grid:
    """MONAI's `Spacing` output shape (`compute_shape_offset`): the span of the input's corner voxels in the
    new spacing, on the image's own axes (or on the world axes when `diagonal`)."""
    n = np.array(grid.shape, dtype=float)
    extent = (n if scale_extent else n - 1) * np.array(grid.spacing)
    if diagonal:  # resampled onto world axes: the rotated volume's bounding box
        extent = np.abs(np.array(grid.rotation)) @ extent
    extent = np.minimum(np.nan_to_num(extent, nan=MAX_EXTENT_MM, posinf=MAX_EXTENT_MM), MAX_EXTENT_MM)
    shape, spacing = [], []
    for size, old, span, new in zip(grid.shape, grid.spacing, extent, _per_axis(pixdim, len(grid.shape)), strict=True):
        if new is None or not np.isfinite(new) or new <= 0:
            shape.append(size)
            spacing.append(old)
        else:
            shape.append(max(1, int(np.round(span / new + (0 if scale_extent else 1)))))
            spacing.append(float(new))
    return Grid(tuple(shape), tuple(spacing), grid.rotation)


def _with_shape(grid: Grid, shape: Sequence[int]) -> Grid:
    spacing = tuple(s * n / m for s, n, m in zip(grid.spacing, grid.shape, shape, strict=True))
    return Grid(tuple(max(1, int(n)) for n in shape), spacing, grid.rotation)


def _resize(grid: Grid, spatial_size, size_mode: str) -> Grid:
    if size_mode == "longest":
        scale = float(_per_axis(spatial_size, 1)[0]) / max(grid.shape)
        return _with_shape(grid, [math.ceil(n * scale) for n in grid.shape])
    sizes = _per_axis(spatial_size, len(grid.shape))
    return _with_shape(grid, [n if s is None or s <= 0 else int(s) for n, s in zip(grid.shape, sizes, strict=True)])


def _first(transform, *names):
    """The first of `names` on the transform's array transform (MONAI's dict wrappers hold one, with the
    values that apply; the wrapper's may be per key) or else on the transform itself."""
    for owner in (*(v for v in vars(transform).values() if isinstance(v, mt.Transform)), transform):
        for name in names:
            if hasattr(owner, name):
                return getattr(owner, name)
    return None


def plan(transform, grid: Grid) -> tuple[Grid, bool]:
    """The grid `transform` leaves, and whether it spans the whole volume (a resample or re-orientation
    that is inverted back onto the input grid afterwards); unknown transforms keep the grid."""
    n = len(grid.shape)
    if isinstance(transform, mt.Orientation | mt.Orientationd):
        return _orient(grid, _first(transform, "axcodes")), True
    if isinstance(transform, mt.Spacing | mt.Spacingd):
        pixdim, diagonal, scale = (_first(transform, k) for k in ("pixdim", "diagonal", "scale_extent"))
        return _respace(grid, pixdim, _flag(diagonal), _flag(scale)), True
    if isinstance(transform, mt.Resize | mt.Resized):
        return _resize(grid, _first(transform, "spatial_size"), _first(transform, "size_mode") or "all"), True
    if isinstance(transform, mt.Zoom | mt.Zoomd):
        if _first(transform, "keep_size"):
            return grid, True
        zoom = _per_axis(_first(transform, "zoom"), n)
        return _with_shape(grid, [math.ceil(s * float(z)) for s, z in zip(grid.shape, zoom, strict=True)]), True
    if isinstance(transform, mt.SpatialPad | mt.SpatialPadd | mt.ResizeWithPadOrCrop | mt.ResizeWithPadOrCropd):
        sizes = _per_axis(_first(transform, "spatial_size"), n)
        pad = [s if z is None or z <= 0 else max(s, int(z)) for s, z in zip(grid.shape, sizes, strict=True)]
        return Grid(tuple(pad), grid.spacing, grid.rotation), True
    if isinstance(transform, mt.DivisiblePad | mt.DivisiblePadd):
        k = [max(1, int(v)) for v in _per_axis(_first(transform, "k"), n)]
        return Grid(
            tuple(math.ceil(s / m) * m for s, m in zip(grid.shape, k, strict=True)), grid.spacing, grid.rotation
        ), True
    roi = _first(transform, "roi_size")  # crops (MONAI's, the app's crop-and-resample around points)
    if roi is not None:
        sizes = _per_axis(roi, n)
        if isinstance(transform, mt.Transform) and type(transform).__module__.startswith("monai."):
            sizes = [s if z is None or z <= 0 else min(s, int(z)) for s, z in zip(grid.shape, sizes, strict=True)]
        return _with_shape(
            grid, [s if z is None or z <= 0 else int(z) for s, z in zip(grid.shape, sizes, strict=True)]
        ), False
    return grid, False


def _flag(value) -> bool:
    """A transform's boolean option, which MONAI's dict wrappers may keep per key.

    Not `params.flag_value` on purpose: the value comes from a built transform (Python truthiness, as MONAI
    reads it), not from a client, so nothing here is refused.
    """
    return bool(value[0] if isinstance(value, tuple | list) and value else value)


_TRANSFORMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _pre_transforms(task) -> list | None:
    """The task's pre-transforms, built once per task (None when they cannot be listed without a request)."""
    try:
        return _TRANSFORMS[task]
    except (KeyError, TypeError):
        pass
    try:
        listed = list(task.pre_transforms())
    except Exception:  # a third-party task may need a request to list them: costed as the worst case
        logger.info("the pre-transforms of %s cannot be listed; costing its pipeline on the input grid", type(task))
        listed = None
    try:
        _TRANSFORMS[task] = listed
    except TypeError:
        pass
    return listed


def _flatten(transforms) -> list:
    flat = []
    for t in transforms:
        inner = getattr(t, "transforms", None)
        flat.extend(_flatten(inner) if isinstance(t, mt.Compose) and inner is not None else [t])
    return flat


def pipeline_bytes(task, header: ImageHeader, channels: int) -> tuple[int, str]:
    """Estimated peak bytes of running `task` on an image with this header and `channels` output classes,
    and what the largest part of it is (for the 413 message)."""
    grid = image_grid(header)
    transforms = _pre_transforms(task)
    whole_volume = transforms is None
    grids: list[Grid] = []
    for transform in _flatten(transforms or []):
        try:
            new, spans = plan(transform, grid)
        except (ArithmeticError, ValueError, TypeError):  # odd arguments: cost it as keeping the whole grid
            logger.info("could not plan the grid of %s; costed as the whole volume", type(transform).__name__)
            new, spans = grid, True
        whole_volume |= spans
        if new.shape != grid.shape:
            grids.append(new)
        grid = new
    if not grids:
        grids = [grid]  # the network runs on the input grid itself
    # the array copy, mask and reply; float copies (one for a crop, two and the inverted classes for a
    # whole-volume pipeline: 20 bytes per int16 voxel with 2 classes, measured 17)
    per_input = header.pixel_bytes + MASK_BYTES_PER_VOXEL + FLOAT_BYTES * (2 + channels if whole_volume else 1)
    input_bytes = header.voxels * per_input
    work = [g.voxels * grid_bytes_per_voxel(channels) for g in grids]
    largest = max(range(len(grids)), key=lambda i: work[i])
    if work[largest] >= input_bytes:
        what = f"the model's {grids[largest].dims()} working grid"
    else:
        what = f"the model's pipeline on the {header.dims()} image"
    return input_bytes + sum(work), what
