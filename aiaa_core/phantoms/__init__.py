"""Seeded CT-like abdominal phantoms with organ labels: test inputs with a known truth, and training data.

The anatomy lives in patient coordinates (mm, LPS: +x patient left, +y posterior, +z superior) whose origin is the
abdomen centre at the level of the spleen; the grid is centred there, and a seeded table offset puts that point
somewhere in the scanner's world. Every voxel's physical point is evaluated, so each size, spacing and orientation
shows the same anatomy, the label matches the image exactly, and the field of view crops the patient instead of
scaling it. Organs are painted in a fixed priority order, so labels never overlap.

The package: `labels` (LABELS, ORIENTATIONS), `grid` (frames, shapes, painting parts on a grid), `body` (the
body plan and unlabelled tissue), `organs` (the labelled organs); here the patient of a seed is assembled and
rendered. Used by the tests, the benches and the app's trainers, so it lives in the core, not the server.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from .body import _Body, _bowel_loop, _colon, _Contrast, _Diaphragm, _Spine, _thorax, _trunk
from .grid import Array, _chunk_slices, _direction, _Part, _render
from .labels import LABELS, ORIENTATIONS
from .organs import (
    _aorta,
    _back_muscles,
    _canal,
    _gallbladder,
    _ivc,
    _kidneys,
    _liver,
    _pancreas,
    _ribs,
    _spleen,
    _stomach,
    _vertebrae,
)

__all__ = ["LABELS", "ORIENTATIONS", "Phantom", "make_phantom", "write_phantom"]

_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha")
_COMPRESSED = (".nii.gz", ".nrrd")
_HU_RANGE = (-1024, 3071)
_BLUR_SIGMA = 0.6  # voxels: partial volume and scanner blur


@dataclass(frozen=True, eq=False)  # eq=False: comparing sitk images yields images, not booleans
class Phantom:
    """A CT volume in Hounsfield units (sitkInt16) and its organ labels (sitkUInt8, values of LABELS)."""

    image: sitk.Image
    label: sitk.Image
    seed: int


def make_phantom(
    seed: int,
    size: Sequence[int] = (112, 96, 64),
    spacing: Sequence[float] = (3.0, 3.0, 3.0),
    orientation: str = "RAS",
    noise: float | None = None,
    contrast: tuple[float, float] | None = None,
) -> Phantom:
    """Render the patient of `seed` on a grid of `size` voxels (i, j, k) centred on the abdomen at spleen level.

    `orientation` is the nibabel axis code of the written file (or "oblique": RAS turned 15-25 degrees about a
    tilted axis); `noise` is the noise sigma in HU (default: seeded, 10-30); `contrast` is (phase, dose) to
    override the seeded contrast timing (phase 0 late arterial .. 1 portal venous; dose 0 is an unenhanced
    scan, the seeded doses are 0.7-1.0) with the same anatomy. Same arguments, same arrays.
    """
    shape = tuple(int(n) for n in size)
    steps = np.asarray(spacing, dtype=float)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"size must be three positive voxel counts, got {size!r}")
    if steps.shape != (3,) or not np.all(steps > 0):
        raise ValueError(f"spacing must be three positive lengths in mm, got {spacing!r}")
    if noise is not None and not noise >= 0:
        raise ValueError(f"noise must be a non-negative sigma in HU, got {noise!r}")
    if contrast is not None and not (len(contrast) == 2 and 0 <= contrast[0] <= 1 and 0 <= contrast[1] <= 2):
        raise ValueError(f"contrast must be (phase 0..1, dose 0..2), got {contrast!r}")
    direction = _direction(orientation, seed)
    matrix = direction * steps  # index step -> mm in LPS: direction @ diag(spacing)
    offset, parts = _anatomy(np.random.default_rng(seed), contrast)

    hu, label = _render(parts, shape, matrix)
    hu = ndimage.gaussian_filter(hu, _BLUR_SIGMA, mode="nearest", truncate=3.0)
    noise_rng = np.random.default_rng((seed, 2))
    sigma = noise_rng.uniform(10.0, 30.0) if noise is None else float(noise)
    if sigma > 0:
        step = _chunk_slices(shape)
        for k0 in range(0, shape[2], step):
            block = hu[k0:k0 + step]
            block += np.float32(sigma) * noise_rng.standard_normal(block.shape, dtype=np.float32)
    np.rint(hu, out=hu)
    np.clip(hu, *_HU_RANGE, out=hu)

    origin = offset - matrix @ ((np.array(shape) - 1) / 2.0)
    images = sitk.GetImageFromArray(hu.astype(np.int16)), sitk.GetImageFromArray(label)
    for image in images:
        image.SetSpacing(tuple(float(s) for s in steps))
        image.SetOrigin(tuple(float(o) for o in origin))
        image.SetDirection(tuple(float(d) for d in direction.ravel()))
    return Phantom(images[0], images[1], seed)


def write_phantom(
    phantom: Phantom, out_dir: str | os.PathLike[str], stem: str = "phantom", extension: str = ".nii.gz"
) -> tuple[Path, Path]:
    """Write `<stem>_image<extension>` and `<stem>_label<extension>` into `out_dir`; return both paths."""
    if extension not in _EXTENSIONS:
        raise ValueError(f"extension must be one of {', '.join(_EXTENSIONS)}, got {extension!r}")
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths = folder / f"{stem}_image{extension}", folder / f"{stem}_label{extension}"
    for image, path in zip((phantom.image, phantom.label), paths, strict=True):
        sitk.WriteImage(image, str(path), useCompression=extension in _COMPRESSED)
    return paths


def _anatomy(rng: np.random.Generator, timing: tuple[float, float] | None = None) -> tuple[Array, list[_Part]]:
    """The patient of one seed: table offset (patient origin in LPS world, mm) and parts in painting order.

    `timing` (phase, dose) replaces the seeded contrast after it is drawn, so the anatomy stays the seed's."""
    offset = np.array([rng.uniform(-25, 25), rng.uniform(-60, 20), rng.uniform(-400, 0)])
    contrast = _Contrast(rng.uniform(0.0, 1.0), rng.uniform(0.7, 1.0))
    if timing is not None:
        contrast = _Contrast(float(timing[0]), float(timing[1]))
    habitus = rng.uniform(0.0, 1.0)
    a = 150 + 28 * habitus + rng.uniform(0, 2)
    b_ant = 117 + 20 * habitus + rng.uniform(0, 2)
    body = _Body(a, b_ant, b_ant * rng.uniform(0.9, 0.95), 8 + 15 * habitus + rng.uniform(-2, 2),
                 rng.uniform(7, 12))
    spine_y, spine_ry, canal_r = body.b_post - body.wall - rng.uniform(40, 50), rng.uniform(16, 19), rng.uniform(8, 10)
    spine = _Spine(spine_y, rng.uniform(20, 25), spine_ry, spine_y + spine_ry + canal_r + 3, canal_r)
    ac = body.a - body.wall
    dome = _Diaphragm(
        (rng.uniform(80, 100), -0.45 * ac, rng.uniform(-10, 10), rng.uniform(35, 55)),
        (rng.uniform(62, 78), 0.45 * ac, rng.uniform(-10, 10), rng.uniform(35, 55)),
    )
    aorta_r = rng.uniform(9, 13)
    aorta_xy = (rng.uniform(8, 20), spine.y - spine.ry - aorta_r - rng.uniform(2, 5))
    spleen = _spleen(rng, body, dome, contrast)
    return offset, [
        _trunk(rng, body),
        _thorax(rng, body, dome, contrast),
        _colon(rng, body, -1.0, rng.uniform(-50, -30)),
        _colon(rng, body, 1.0, rng.uniform(-40, -20)),
        *[_bowel_loop(rng, body, contrast) for _ in range(int(rng.integers(8, 14)))],
        _liver(rng, body, dome, contrast),
        _gallbladder(rng, body),
        _stomach(rng, body, dome, contrast),
        _pancreas(rng, body, spine, aorta_xy[1] - aorta_r, spleen, contrast),
        *_back_muscles(rng, body, spine),
        _canal(rng, spine),
        *_kidneys(rng, spine, contrast),
        _ivc(rng, spine, dome, contrast),
        _aorta(rng, aorta_xy, aorta_r, contrast),
        _ribs(rng, body),
        *_vertebrae(rng, spine),
        spleen.part,
    ]
