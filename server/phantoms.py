"""Seeded CT-like abdominal phantoms with organ labels: test inputs with a known truth, and training data.

The anatomy lives in patient coordinates (mm, LPS: +x patient left, +y posterior, +z superior) whose origin is the
abdomen centre at the level of the spleen; the grid is centred there, and a seeded table offset puts that point
somewhere in the scanner's world. Every voxel's physical point is evaluated, so each size, spacing and orientation
shows the same anatomy, the label matches the image exactly, and the field of view crops the patient instead of
scaling it. Organs are painted in a fixed priority order, so labels never overlap.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

LABELS: dict[str, int] = {
    "spleen": 1,
    "liver": 2,
    "kidney_left": 3,
    "kidney_right": 4,
    "stomach": 5,
    "aorta": 6,
    "vertebra": 7,
    "ivc": 8,
    "pancreas": 9,
    "gallbladder": 10,
    "rib": 11,
}
# Named orientations cycled by tests and training; each keeps index axes left-right, front-back, head-foot, so
# the default field of view holds the spleen. make_phantom also takes any other axis code, e.g. "PIR".
ORIENTATIONS: tuple[str, ...] = ("RAS", "LPS", "LAS", "LPI", "oblique")

_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha")
_COMPRESSED = (".nii.gz", ".nrrd")
_LPS_AXES = {"L": (1, 0, 0), "R": (-1, 0, 0), "P": (0, 1, 0), "A": (0, -1, 0), "S": (0, 0, 1), "I": (0, 0, -1)}
_AIR = -1000.0
_HU_RANGE = (-1024, 3071)
_FAR = 1e4  # mm: the extent of structures that span the whole field of view
_CHUNK_VOXELS = 1 << 20  # bounds the temporaries of one evaluation step
_BLUR_SIGMA = 0.6  # voxels: partial volume and scanner blur

Array = np.ndarray
Shader = Callable[[Array, Array, Array], tuple[Array, Array | float]]


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


# ---------------------------------------------------------------------------------------------- geometry


def _direction(orientation: str, seed: int) -> Array:
    """Direction cosines (columns: LPS direction of each index axis) for a nibabel axis code or "oblique"."""
    if orientation == "oblique":
        rng = np.random.default_rng((seed, 1))  # its own stream: the anatomy must not depend on orientation
        axis = rng.choice((-1.0, 1.0), 3) * rng.uniform(0.4, 1.0, 3)  # tilted: no component near zero
        return _rotation(axis, math.radians(rng.uniform(15.0, 25.0))) @ np.diag([-1.0, -1.0, 1.0])
    code = orientation.upper() if isinstance(orientation, str) else ""
    pairs = [{"L", "R"}, {"P", "A"}, {"S", "I"}]
    if len(code) != 3 or any(sum(c in pair for c in code) != 1 for pair in pairs):
        raise ValueError(f"orientation must be one of {', '.join(ORIENTATIONS)} or an axis code, got {orientation!r}")
    return np.array([_LPS_AXES[c] for c in code], dtype=float).T


def _rotation(axis: Sequence[float], angle: float) -> Array:
    """Proper rotation (det +1) by `angle` radians about `axis` (Rodrigues)."""
    k = np.asarray(axis, dtype=float) / np.linalg.norm(axis)
    cross = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + math.sin(angle) * cross + (1.0 - math.cos(angle)) * cross @ cross


def _frame(u: Sequence[float], v_hint: Sequence[float]) -> Array:
    """Rows u, v, w of a right-handed orthonormal frame: u as given, v the part of `v_hint` orthogonal to u."""
    u = np.asarray(u, dtype=float) / np.linalg.norm(u)
    v = np.asarray(v_hint, dtype=float)
    v = v - (v @ u) * u
    v /= np.linalg.norm(v)
    return np.array([u, v, np.cross(u, v)])


def _random_frame(rng: np.random.Generator) -> Array:
    """A uniformly oriented frame, for shapes with no anatomical axis (bowel loops)."""
    return _frame(rng.normal(size=3), rng.normal(size=3))


def _local(x: Array, y: Array, z: Array, centre: Array, frame: Array) -> list[Array]:
    """Coordinates of the points along the rows of `frame`, relative to `centre`."""
    dx, dy, dz = x - centre[0], y - centre[1], z - centre[2]
    return [r[0] * dx + r[1] * dy + r[2] * dz for r in frame]


def _extent(frame: Array, semi: Sequence[float]) -> Array:
    """Half-size along x, y, z of the box around an ellipsoid with axes `frame` rows and semi-axes `semi`."""
    return np.sqrt(((frame * np.asarray(semi, dtype=float)[:, None]) ** 2).sum(axis=0))


def _tube_ratio(x: Array, y: Array, z: Array, points: Array, radii: Sequence[float]) -> Array:
    """Distance to a polyline over its (linearly varying) radius: below 1 inside the tube."""
    best = None
    for p, q, rp, rq in zip(points[:-1], points[1:], radii[:-1], radii[1:], strict=True):
        d = q - p
        t = ((x - p[0]) * d[0] + (y - p[1]) * d[1] + (z - p[2]) * d[2]) / float(d @ d)
        np.clip(t, 0.0, 1.0, out=t)
        ex, ey, ez = x - p[0] - t * d[0], y - p[1] - t * d[1], z - p[2] - t * d[2]
        ratio = np.sqrt(ex * ex + ey * ey + ez * ez) / (rp + t * (rq - rp))
        best = ratio if best is None else np.minimum(best, ratio)
    return best


def _scatter(n: int, where: Array, inside: Array) -> Array:
    """Full-length mask of `n` points that is True at the `where` indices selected by `inside`."""
    mask = np.zeros(n, dtype=bool)
    mask[where[inside]] = True
    return mask


# ---------------------------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class _Part:
    """One painted structure: its label (0 for unlabelled tissue), patient-space box, and shader.

    The shader takes the flat x, y, z (mm) of the points in the box and returns which are inside and their HU
    (a scalar or one value per inside point)."""

    label: int
    lo: Array
    hi: Array
    shade: Shader


def _chunk_slices(shape: tuple[int, int, int]) -> int:
    return max(1, _CHUNK_VOXELS // (shape[0] * shape[1]))


def _index_box(part: _Part, inverse: Array, centre: Array, shape: tuple[int, ...]) -> list[tuple[int, int]] | None:
    """Index ranges (half open) of the voxels that can fall in the part's box, or None when it misses the grid."""
    corners = np.array(np.meshgrid(*zip(part.lo, part.hi, strict=True), indexing="ij")).reshape(3, -1)
    index = inverse @ corners + centre[:, None]
    lo = np.clip(np.floor(index.min(axis=1)).astype(int), 0, shape)
    hi = np.clip(np.ceil(index.max(axis=1)).astype(int) + 1, 0, shape)
    return None if np.any(hi <= lo) else list(zip(lo.tolist(), hi.tolist(), strict=True))


def _render(parts: list[_Part], shape: tuple[int, int, int], matrix: Array) -> tuple[Array, Array]:
    """HU (float32) and label (uint8) arrays in numpy (k, j, i) order, painted part after part in k slabs."""
    ni, nj, nk = shape
    centre = (np.array(shape) - 1) / 2.0
    hu = np.full((nk, nj, ni), _AIR, dtype=np.float32)
    label = np.zeros((nk, nj, ni), dtype=np.uint8)
    boxes = [_index_box(p, np.linalg.inv(matrix), centre, shape) for p in parts]
    step = _chunk_slices(shape)
    for k0 in range(0, nk, step):
        for part, box in zip(parts, boxes, strict=True):
            if box is None:
                continue
            (i0, i1), (j0, j1), (b0, b1) = box
            a, b = max(k0, b0), min(k0 + step, b1)
            if a >= b:
                continue
            idx = [np.arange(lo, hi, dtype=np.float32) - np.float32(c)
                   for (lo, hi), c in zip(((i0, i1), (j0, j1), (a, b)), centre, strict=True)]
            i, j, k = idx[0][None, None, :], idx[1][None, :, None], idx[2][:, None, None]
            x, y, z = (np.float32(m[0]) * i + np.float32(m[1]) * j + np.float32(m[2]) * k for m in matrix)
            mask, value = part.shade(x.ravel(), y.ravel(), z.ravel())
            mask = mask.reshape(b - a, j1 - j0, i1 - i0)
            label[a:b, j0:j1, i0:i1][mask] = part.label
            hu[a:b, j0:j1, i0:i1][mask] = value
    return hu, label


# ---------------------------------------------------------------------------------------------- anatomy


@dataclass(frozen=True)
class _Contrast:
    """Seeded contrast timing: `phase` 0 = late arterial .. 1 = portal venous; `dose` scales all enhancement."""

    phase: float
    dose: float

    def hu(self, plain: float, arterial: float, portal: float) -> float:
        return plain + self.dose * (arterial + (portal - arterial) * self.phase)


@dataclass(frozen=True)
class _Body:
    """Elliptic trunk cross-section (flatter at the back), subcutaneous fat and the muscle wall."""

    a: float  # half width, left-right
    b_ant: float  # half depth in front of the centre
    b_post: float  # half depth behind it
    fat: float
    muscle: float

    @property
    def wall(self) -> float:
        return self.fat + self.muscle

    def q(self, x: Array, y: Array, inset: float = 0.0) -> Array:
        """Squared normalised radius of the outline shrunk by `inset` mm: below 1 inside."""
        b = np.where(y < 0, np.float32(self.b_ant - inset), np.float32(self.b_post - inset))
        return (x / np.float32(self.a - inset)) ** 2 + (y / b) ** 2

    def cavity(self, x: Array, y: Array, inset: float = 0.0) -> Array:
        return self.q(x, y, self.wall + inset) < 1


@dataclass(frozen=True)
class _Diaphragm:
    """Two domes (right higher); above them lie the lung bases and the heart."""

    right: tuple[float, float, float, float]  # apex z, apex x, apex y, drop in mm per (100 mm)^2
    left: tuple[float, float, float, float]

    def height(self, x: Array, y: Array) -> Array:
        zr, xr, yr, dr = self.right
        zl, xl, yl, dl = self.left
        right = zr - dr * 1e-4 * ((x - xr) ** 2 + (y - yr) ** 2)
        left = zl - dl * 1e-4 * ((x - xl) ** 2 + (y - yl) ** 2)
        return np.maximum(right, left)


@dataclass(frozen=True)
class _Spine:
    y: float  # vertebral body centre (x = 0)
    rx: float
    ry: float
    canal_y: float
    canal_r: float


@dataclass(frozen=True)
class _Spleen:
    part: _Part
    centre: Array
    normal: Array  # outward, towards the body wall
    thickness: float


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


def _box(lo: Sequence[float], hi: Sequence[float]) -> tuple[Array, Array]:
    return np.asarray(lo, dtype=float), np.asarray(hi, dtype=float)


def _trunk(rng: np.random.Generator, body: _Body) -> _Part:
    """Subcutaneous fat, the muscle wall and the intra-abdominal fat, the full height of the grid."""
    fat, muscle, inner = rng.uniform(-110, -90), rng.uniform(40, 60), rng.uniform(-100, -80)

    def shade(x: Array, y: Array, z: Array) -> tuple[Array, Array]:
        inside = body.q(x, y) < 1
        x, y = x[inside], y[inside]
        hu = np.where(body.q(x, y, body.fat) < 1, np.float32(muscle), np.float32(fat))
        hu[body.cavity(x, y)] = inner
        return inside, hu

    return _Part(0, *_box((-body.a, -body.b_ant, -_FAR), (body.a, body.b_post, _FAR)), shade)


def _thorax(rng: np.random.Generator, body: _Body, dome: _Diaphragm, contrast: _Contrast) -> _Part:
    """Diaphragm muscle, the lung bases above it and the heart on its central tendon."""
    lung, muscle = rng.uniform(-870, -820), rng.uniform(40, 60)
    blood = 0.5 * (contrast.hu(40, 200, 120) + contrast.hu(40, 115, 160))
    ac, ba, bp = body.a - body.wall, body.b_ant - body.wall, body.b_post - body.wall
    heart_c = np.array([rng.uniform(5, 25), -0.35 * ba, 0.0])
    heart_c[2] = float(dome.height(heart_c[0], heart_c[1])) + rng.uniform(50, 60)
    heart_semi = np.array([rng.uniform(60, 70), rng.uniform(45, 55), rng.uniform(50, 60)])
    gx, gy = np.meshgrid(np.linspace(-ac, ac, 41), np.linspace(-ba, bp, 41))
    floor = float(dome.height(gx, gy)[body.cavity(gx, gy)].min()) - 10

    def shade(x: Array, y: Array, z: Array) -> tuple[Array, Array]:
        height = dome.height(x, y)
        inside = body.cavity(x, y) & (z > height - 5)
        x, y, z, height = x[inside], y[inside], z[inside], height[inside]
        hu = np.where(z > height, np.float32(lung), np.float32(muscle))
        heart = (((x - heart_c[0]) / heart_semi[0]) ** 2 + ((y - heart_c[1]) / heart_semi[1]) ** 2
                 + ((z - heart_c[2]) / heart_semi[2]) ** 2) < 1
        hu[heart & (z > height)] = blood
        return inside, hu

    return _Part(0, *_box((-ac, -ba, floor), (ac, bp, _FAR)), shade)


def _colon(rng: np.random.Generator, body: _Body, side: float, top: float) -> _Part:
    """Ascending (side -1, patient right) or descending colon: a flank tube of stool and gas."""
    ac, bp = body.a - body.wall, body.b_post - body.wall
    radius = rng.uniform(18, 25)
    cx, cy = side * (ac - radius - rng.uniform(2, 8)), rng.uniform(-0.1, 0.25) * bp
    wall, stool = rng.uniform(40, 60), rng.uniform(10, 40)
    phases = rng.uniform(0, 2 * np.pi, 3)

    def shade(x: Array, y: Array, z: Array) -> tuple[Array, Array]:
        r = np.sqrt((x - cx) ** 2 + (y - cy) ** 2) / radius
        inside = (r < 1) & (z < top) & body.cavity(x, y)
        x, y, z, r = x[inside], y[inside], z[inside], r[inside]
        gas = np.sin(x / 6 + phases[0]) * np.sin(y / 7 + phases[1]) * np.sin(z / 5 + phases[2]) > 0.25
        hu = np.where(gas, np.float32(-900), np.float32(stool))
        hu[r > 0.85] = wall
        return inside, hu

    return _Part(0, *_box((cx - radius, cy - radius, -_FAR), (cx + radius, cy + radius, top)), shade)


def _bowel_loop(rng: np.random.Generator, body: _Body, contrast: _Contrast) -> _Part:
    """A small-bowel loop in the lower abdomen: fluid, soft content or gas inside an enhancing wall."""
    ac, ba, bp = body.a - body.wall, body.b_ant - body.wall, body.b_post - body.wall
    centre = np.array([rng.uniform(-0.6, 0.6) * ac, rng.uniform(-0.75 * ba, 0.1 * bp), rng.uniform(-150, -25)])
    semi, frame = rng.uniform(12, 22, 3), _random_frame(rng)
    content = (rng.uniform(5, 25), rng.uniform(25, 45), -950.0)[rng.choice(3, p=(0.45, 0.35, 0.2))]
    wall = contrast.hu(40, 35, 45)

    def shade(x: Array, y: Array, z: Array) -> tuple[Array, Array]:
        u, v, w = _local(x, y, z, centre, frame)
        q = (u / semi[0]) ** 2 + (v / semi[1]) ** 2 + (w / semi[2]) ** 2
        inside = (q < 1) & body.cavity(x, y, 2)
        return inside, np.where(q[inside] > 0.72, np.float32(wall), np.float32(content))

    e = _extent(frame, semi)
    return _Part(0, centre - e, centre + e, shade)


def _liver(rng: np.random.Generator, body: _Body, dome: _Diaphragm, contrast: _Contrast) -> _Part:
    """Right lobe filling the right upper quadrant under the dome, left lobe across the midline in front, and
    portal/hepatic vein branches that stand out in the portal phase."""
    ac, ba, bp = body.a - body.wall, body.b_ant - body.wall, body.b_post - body.wall
    lobes = [
        (np.array([-0.45 * ac + rng.uniform(-6, 6), rng.uniform(-12, 6), rng.uniform(12, 28)]),
         np.array([0.48 * ac + rng.uniform(-5, 6), 0.5 * (ba + bp) * rng.uniform(0.75, 0.9), rng.uniform(72, 88)]),
         _rotation((0, 0, 1), rng.uniform(-0.2, 0.2))),
        (np.array([rng.uniform(5, 25), -0.55 * ba + rng.uniform(-6, 6), rng.uniform(30, 45)]),
         np.array([rng.uniform(55, 75), rng.uniform(28, 38), rng.uniform(35, 45)]),
         _rotation((0, 0, 1), rng.uniform(-0.3, 0.3))),
    ]
    parenchyma, blood = contrast.hu(55, 12, 50) + rng.uniform(-5, 5), contrast.hu(45, 40, 150)
    hilum = np.array([-0.3 * ac, rng.uniform(-15, 0), rng.uniform(-10, 5)])
    vessels = []
    for lobe, count in ((0, 5), (1, 2)):
        c, semi, _ = lobes[lobe]
        for _ in range(count):
            direction = rng.normal(size=3)
            tip = c + 0.7 * semi * direction / np.linalg.norm(direction)
            vessels.append((np.array([hilum, 0.5 * (hilum + tip) + rng.normal(0, 8, 3), tip]),
                            (rng.uniform(5, 7), 4.0, 2.5)))

    def shade(x: Array, y: Array, z: Array) -> tuple[Array, Array]:
        q = None
        for c, semi, frame in lobes:
            u, v, w = _local(x, y, z, c, frame)
            lobe_q = (u / semi[0]) ** 2 + (v / semi[1]) ** 2 + (w / semi[2]) ** 2
            q = lobe_q if q is None else np.minimum(q, lobe_q)
        near = np.flatnonzero(q < 1)
        xs, ys, zs = x[near], y[near], z[near]
        keep = body.cavity(xs, ys, 1.5) & (zs < dome.height(xs, ys) - 5)
        xs, ys, zs = xs[keep], ys[keep], zs[keep]
        hu = np.full(xs.shape, parenchyma, dtype=np.float32)
        for points, radii in vessels:
            hu[_tube_ratio(xs, ys, zs, points, radii) < 1] = blood
        return _scatter(x.size, near, keep), hu

    lo = np.min([c - _extent(f, s) for c, s, f in lobes], axis=0)
    hi = np.max([c + _extent(f, s) for c, s, f in lobes], axis=0)
    return _Part(LABELS["liver"], lo, hi, shade)


def _gallbladder(rng: np.random.Generator, body: _Body) -> _Part:
    """A bile-filled pear under the liver, its fundus pointing forward and down."""
    ac, ba = body.a - body.wall, body.b_ant - body.wall
    centre = np.array([-0.38 * ac + rng.uniform(-8, 8), -0.45 * ba + rng.uniform(-8, 8), rng.uniform(-40, -20)])
    frame = _frame((rng.uniform(-0.3, 0.3), -0.6, -1.0), (1.0, 0.0, 0.0))
    semi, bile = np.array([rng.uniform(32, 42), rng.uniform(14, 19), rng.uniform(14, 19)]), rng.uniform(0, 18)

    def shade(x: Array, y: Array, z: Array) -> tuple[Array, float]:
        u, v, w = _local(x, y, z, centre, frame)
        # narrower towards the neck (u < 0): a pear, not an egg
        taper = np.where(u < 0, np.float32(1.0), np.float32(0.0)) * (u / semi[0]) * 0.35 + 1
        q = (u / semi[0]) ** 2 + ((v / semi[1]) ** 2 + (w / semi[2]) ** 2) / taper**2
        return (q < 1) & body.cavity(x, y, 2), bile

    e = _extent(frame, semi)
    return _Part(LABELS["gallbladder"], centre - e, centre + e, shade)


def _stomach(rng: np.random.Generator, body: _Body, dome: _Diaphragm, contrast: _Contrast) -> _Part:
    """A J-shaped tube from the fundus under the left dome to the pylorus; fluid with gas in front (supine)."""
    ac, ba, bp = body.a - body.wall, body.b_ant - body.wall, body.b_post - body.wall
    points = np.array([
        [0.38 * ac + rng.uniform(-8, 8), 0.05 * bp + rng.uniform(-8, 8), rng.uniform(25, 40)],
        [0.42 * ac + rng.uniform(-8, 8), -0.35 * ba + rng.uniform(-8, 8), rng.uniform(-10, 5)],
        [0.12 * ac + rng.uniform(-8, 8), -0.62 * ba + rng.uniform(-6, 6), rng.uniform(-40, -25)],
        [-0.15 * ac + rng.uniform(-6, 6), -0.5 * ba + rng.uniform(-6, 6), rng.uniform(-50, -35)],
    ])
    radii = (rng.uniform(30, 38), rng.uniform(26, 33), rng.uniform(17, 22), rng.uniform(9, 12))
    wall, fluid, level = contrast.hu(40, 45, 40), rng.uniform(5, 25), -ba * rng.uniform(0.3, 0.55)

    def shade(x: Array, y: Array, z: Array) -> tuple[Array, Array]:
        ratio = _tube_ratio(x, y, z, points, radii)
        inside = (ratio < 1) & body.cavity(x, y, 2) & (z < dome.height(x, y) - 5)
        ratio, y = ratio[inside], y[inside]
        hu = np.where(y < level, np.float32(_AIR), np.float32(fluid))
        hu[ratio > 0.88] = wall
        return inside, hu

    r = max(radii)
    return _Part(LABELS["stomach"], points.min(axis=0) - r, points.max(axis=0) + r, shade)


def _pancreas(
    rng: np.random.Generator, body: _Body, spine: _Spine, aorta_front: float, spleen: _Spleen, contrast: _Contrast
) -> _Part:
    """Head by the duodenum on the right, neck in front of the aorta, tail reaching the splenic hilum; lobulated."""
    ac = body.a - body.wall
    tail = spleen.centre - spleen.normal * (spleen.thickness + rng.uniform(10, 18)) - (0, 0, rng.uniform(10, 20))
    points = np.array([
        [-0.18 * ac + rng.uniform(-6, 6), spine.y - rng.uniform(45, 52), rng.uniform(-55, -40)],
        [rng.uniform(-5, 5), aorta_front - rng.uniform(15, 22), rng.uniform(-38, -28)],
        [0.3 * ac + rng.uniform(-6, 6), spine.y - rng.uniform(22, 30), rng.uniform(-25, -12)],
        tail,
    ])
    radii = (rng.uniform(13, 17), rng.uniform(9, 12), rng.uniform(9, 12), rng.uniform(7, 10))
    hu, phases = contrast.hu(40, 65, 50) + rng.uniform(-5, 5), rng.uniform(0, 2 * np.pi, 3)

    def shade(x: Array, y: Array, z: Array) -> tuple[Array, Array]:
        inside = _tube_ratio(x, y, z, points, radii) < 1
        x, y, z = x[inside], y[inside], z[inside]
        lobules = np.sin(x / 3 + phases[0]) * np.sin(y / 3 + phases[1]) * np.sin(z / 3 + phases[2])
        return inside, hu + 12 * lobules

    r = max(radii)
    return _Part(LABELS["pancreas"], points.min(axis=0) - r, points.max(axis=0) + r, shade)


def _column(label: int, centre: tuple[float, float], semi: tuple[float, float], hu: float,
            clip: Callable[[Array, Array], Array] | None = None, top: float = _FAR) -> _Part:
    """An elliptic column up to `top` (canal, back muscles, great vessels), optionally clipped in x, y."""
    (cx, cy), (sx, sy) = centre, semi

    def shade(x: Array, y: Array, z: Array) -> tuple[Array, float]:
        inside = (((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2 < 1) & (z < top)
        return (inside & clip(x, y) if clip else inside), hu

    return _Part(label, *_box((cx - sx, cy - sy, -_FAR), (cx + sx, cy + sy, top)), shade)


def _psoas(side: float, centre: tuple[float, float], top: float, widest: float, hu: float) -> _Part:
    """A psoas muscle beside the spine, growing from `top` downwards to `widest` mm radius."""
    cx, cy = side * centre[0], centre[1]

    def shade(x: Array, y: Array, z: Array) -> tuple[Array, float]:
        r = np.clip((top - z) * 0.22, 1e-3, widest)
        return (((x - cx) / r) ** 2 + ((y - cy) / (0.85 * r)) ** 2 < 1) & (z < top), hu

    return _Part(0, *_box((cx - widest, cy - widest, -_FAR), (cx + widest, cy + widest, top)), shade)


def _back_muscles(rng: np.random.Generator, body: _Body, spine: _Spine) -> list[_Part]:
    """Erector spinae behind the spine (inside the skin fat) and the two psoas muscles beside it."""
    muscle, top, widest = rng.uniform(40, 60), rng.uniform(-30, -5), rng.uniform(20, 26)
    inside_fat = lambda x, y: body.q(x, y, body.fat) < 1  # noqa: E731
    parts = []
    for side in (-1.0, 1.0):
        centre = (side * rng.uniform(28, 35), spine.canal_y + rng.uniform(18, 26))
        parts.append(_column(0, centre, (rng.uniform(22, 28), rng.uniform(20, 26)), muscle, inside_fat))
        parts.append(_psoas(side, (spine.rx + rng.uniform(12, 18), spine.y + rng.uniform(-2, 6)), top, widest, muscle))
    return parts


def _canal(rng: np.random.Generator, spine: _Spine) -> _Part:
    """The spinal canal: fluid behind the vertebral bodies."""
    return _column(0, (0.0, spine.canal_y), (spine.canal_r, spine.canal_r), rng.uniform(0, 15))


def _kidneys(rng: np.random.Generator, spine: _Spine, contrast: _Contrast) -> list[_Part]:
    """Both kidneys beside the spine, the left higher; cortex brighter than medulla."""
    cortex, medulla = contrast.hu(35, 140, 130), contrast.hu(35, 30, 100)
    left = _kidney(rng, LABELS["kidney_left"], 1.0, spine, rng.uniform(-58, -40), cortex, medulla)
    right = _kidney(rng, LABELS["kidney_right"], -1.0, spine, rng.uniform(-72, -52), cortex, medulla)
    return [left, right]


def _kidney(rng: np.random.Generator, label: int, side: float, spine: _Spine, z: float, cortex: float,
            medulla: float) -> _Part:
    """A bean: an ellipsoid (upper pole medial and back) with the renal sinus fat cut out at the hilum."""
    centre = np.array([side * rng.uniform(58, 72), spine.y + rng.uniform(5, 18), z])
    semi = np.array([rng.uniform(50, 60), rng.uniform(25, 31), rng.uniform(20, 25)])
    hilum = math.radians(40)
    frame = _frame((-side * rng.uniform(0.1, 0.25), rng.uniform(0.15, 0.3), 1.0),
                   (-side * math.cos(hilum), -math.sin(hilum), 0.0))  # v points to the hilum, in front and medial
    sinus = semi * (0.5, 0.5, 0.45)
    cortex, medulla = cortex + rng.uniform(-8, 8), medulla + rng.uniform(-8, 8)

    def shade(x: Array, y: Array, z: Array) -> tuple[Array, Array]:
        u, v, w = _local(x, y, z, centre, frame)
        q = (u / semi[0]) ** 2 + (v / semi[1]) ** 2 + (w / semi[2]) ** 2
        qs = (u / sinus[0]) ** 2 + ((v - 0.6 * semi[1]) / sinus[1]) ** 2 + (w / sinus[2]) ** 2
        inside = (q < 1) & (qs > 1)
        q, qs = q[inside], qs[inside]
        return inside, np.where((q > 0.55) | (qs < 1.3), np.float32(cortex), np.float32(medulla))

    e = _extent(frame, semi)
    return _Part(label, centre - e, centre + e, shade)


def _ivc(rng: np.random.Generator, spine: _Spine, dome: _Diaphragm, contrast: _Contrast) -> _Part:
    """The inferior vena cava, right in front of the spine, up through the liver to just above the diaphragm."""
    centre = (-rng.uniform(18, 28), spine.y - spine.ry - rng.uniform(8, 16))
    semi = (rng.uniform(11, 15), rng.uniform(8, 11))
    top = float(dome.height(*centre)) + 15
    return _column(LABELS["ivc"], centre, semi, contrast.hu(40, 115, 160), top=top)


def _aorta(rng: np.random.Generator, centre: tuple[float, float], radius: float, contrast: _Contrast) -> _Part:
    """The aorta, left in front of the vertebral bodies, the full height of the grid."""
    return _column(LABELS["aorta"], centre, (radius, radius), contrast.hu(40, 200, 120) + rng.uniform(-10, 10))


def _ribs(rng: np.random.Generator, body: _Body) -> _Part:
    """Ribs in the muscle wall, falling from the spine towards the front so that a slice cuts short arcs; the
    lowest stop at the flank (floating ribs)."""
    mid = body.fat + 0.5 * body.muscle
    base, pitch, drop = rng.uniform(-40, -20), rng.uniform(26, 32), rng.uniform(80, 110)
    levels = base + pitch * np.arange(8)  # height where each rib leaves the spine
    ends = np.pi * np.array([0.5, 0.6, 0.7, 0.8, 0.9, 0.9, 0.9, 0.9])  # angle from the back where it stops
    radial, vertical, marrow = rng.uniform(3.5, 4.5), rng.uniform(4.5, 6), rng.uniform(250, 320)

    def shade(x: Array, y: Array, z: Array) -> tuple[Array, Array]:
        q = body.q(x, y, mid)
        near = np.flatnonzero((q > 0.8) & (q < 1.25))
        xs, ys, zs, qs = x[near], y[near], z[near], q[near]
        depth = np.sqrt(xs * xs + ys * ys) * (1 - 1 / np.sqrt(qs))  # mm outside the mid-wall outline
        angle = np.arctan2(np.abs(xs) / body.a, ys / body.b_post)  # 0 at the spine, pi at the front
        fall = zs + drop / np.pi * angle
        best = np.full(xs.shape, np.inf, dtype=np.float32)
        for level, end in zip(levels, ends, strict=True):
            e = (depth / radial) ** 2 + ((fall - level) / vertical) ** 2
            e[angle > end] = np.inf
            np.minimum(best, e, out=best)
        inside = (best < 1) & (angle > 0.25)  # medially they dive under the back muscles to the spine
        return _scatter(x.size, near, inside), marrow + 600 * best[inside]

    lo = (-body.a, -body.b_ant, levels[0] - drop - vertical)
    hi = (body.a, body.b_post, levels[-1] + vertical)
    return _Part(LABELS["rib"], *_box(lo, hi), shade)


def _vertebrae(rng: np.random.Generator, spine: _Spine) -> list[_Part]:
    """Discs, then the stacked vertebrae: cancellous bodies in a cortical shell, arches and processes."""
    pitch, disc = rng.uniform(30, 35), rng.uniform(7, 10)
    start = rng.uniform(0, pitch)
    cancellous, cortex, disc_hu = rng.uniform(250, 350), rng.uniform(700, 1000), rng.uniform(80, 100)
    arch, spinous, transverse = rng.uniform(5, 7), rng.uniform(30, 40), spine.canal_r + rng.uniform(24, 30)
    back = spine.canal_y + spine.canal_r + spinous

    def body_q(x: Array, y: Array) -> Array:
        return (x / spine.rx) ** 2 + ((y - spine.y) / spine.ry) ** 2

    def disc_shade(x: Array, y: Array, z: Array) -> tuple[Array, float]:
        return (body_q(x, y) < 1) & (np.mod(z - start, pitch) < disc), disc_hu

    def bone_shade(x: Array, y: Array, z: Array) -> tuple[Array, Array]:
        h, q = np.mod(z - start, pitch), body_q(x, y)
        rc = np.sqrt(x * x + (y - spine.canal_y) ** 2)
        level = (h >= disc + 2) & (h <= pitch - 2)
        vertebral_body = (q < 1) & (h >= disc)
        inside = (
            vertebral_body
            | ((rc > spine.canal_r) & (rc < spine.canal_r + arch) & (y > spine.y + spine.ry - 4) & level)
            | ((np.abs(x) < 3.5) & (y > spine.canal_y + spine.canal_r) & (y < back) & level)
            | ((np.abs(x) < transverse) & (np.abs(y - spine.canal_y + 2) < 5) & (rc > spine.canal_r)
               & (h > disc + 8) & (h < disc + 16))
        )
        shell = (q > 0.8) | (h < disc + 1.5) | (h > pitch - 1.5)
        return inside, np.where(vertebral_body & ~shell, np.float32(cancellous), np.float32(cortex))[inside]

    lo, hi = (-transverse, spine.y - spine.ry, -_FAR), (transverse, back, _FAR)
    return [_Part(0, *_box(lo, hi), disc_shade), _Part(LABELS["vertebra"], *_box(lo, hi), bone_shade)]


def _spleen(rng: np.random.Generator, body: _Body, dome: _Diaphragm, contrast: _Contrast) -> _Spleen:
    """The spleen against the left posterolateral wall under the dome: a rotated ellipsoid bent into a crescent,
    its surface waved at low frequency; mottled in the arterial phase."""
    ac, bp = body.a - body.wall, body.b_post - body.wall
    angle = rng.uniform(0.6, 0.95)  # from lateral towards the back
    normal = np.array([math.cos(angle) / ac, math.sin(angle) / bp, 0.0])
    normal /= np.linalg.norm(normal)
    semi = np.array([rng.uniform(40, 60), rng.uniform(24, 36), rng.uniform(16, 26)])
    centre = np.array([ac * math.cos(angle), bp * math.sin(angle), 0.0]) - normal * (semi[2] + rng.uniform(2, 6))
    forward = np.array([normal[1], -normal[0], 0.0])  # along the wall, towards the front
    elevation = rng.uniform(0.6, 0.95)
    u = -math.cos(elevation) * forward + math.sin(elevation) * np.array([0.0, 0.0, 1.0])  # upper pole back
    frame = _frame(u, np.cross(normal, u))  # rows u, v, w = normal
    roll = rng.uniform(-0.25, 0.25)
    frame = np.array([frame[0], math.cos(roll) * frame[1] + math.sin(roll) * frame[2],
                      -math.sin(roll) * frame[1] + math.cos(roll) * frame[2]])
    bend_u, bend_v = rng.uniform(0.002, 0.005), rng.uniform(0.004, 0.01)
    waves = rng.normal(size=(4, 3))
    waves *= (rng.uniform(1.5, 3.5, 4) / np.linalg.norm(waves, axis=1))[:, None]
    amplitudes, phases = rng.uniform(0.02, 0.06, 4), rng.uniform(0, 2 * np.pi, 4)
    hu = contrast.hu(45, 75, 60) + rng.uniform(-6, 6)
    mottle = (1 - contrast.phase) * rng.uniform(10, 25)
    ripples = rng.normal(size=(2, 3))
    ripples *= (2 * np.pi / rng.uniform(15, 25, 2) / np.linalg.norm(ripples, axis=1))[:, None]
    ripple_phases = rng.uniform(0, 2 * np.pi, 2)
    reach = 1 + amplitudes.sum()

    def shade(x: Array, y: Array, z: Array) -> tuple[Array, Array]:
        u, v, w = _local(x, y, z, centre, frame)
        w = (w + bend_u * u * u + bend_v * v * v) / semi[2]  # ends curl inwards: concave hilum side
        u, v = u / semi[0], v / semi[1]
        q = u * u + v * v + w * w
        near = np.flatnonzero(q < reach**2)
        u, v, w, xs, ys, zs = u[near], v[near], w[near], x[near], y[near], z[near]
        bump = 1 + sum(a * np.sin(k[0] * u + k[1] * v + k[2] * w + p)
                       for a, k, p in zip(amplitudes, waves, phases, strict=True))
        keep = (q[near] < bump * bump) & body.cavity(xs, ys, 1) & (zs < dome.height(xs, ys) - 5)
        xs, ys, zs = xs[keep], ys[keep], zs[keep]
        texture = np.prod([np.sin(k[0] * xs + k[1] * ys + k[2] * zs + p)
                           for k, p in zip(ripples, ripple_phases, strict=True)], axis=0)
        return _scatter(x.size, near, keep), hu + mottle * texture

    e = _extent(frame, reach * semi + (0, 0, reach**2 * (bend_u * semi[0] ** 2 + bend_v * semi[1] ** 2)))
    part = _Part(LABELS["spleen"], centre - e, centre + e, shade)
    return _Spleen(part, centre, normal, semi[2])
