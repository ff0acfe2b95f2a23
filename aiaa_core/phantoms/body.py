"""The patient's body plan (trunk outline, diaphragm, spine, contrast timing) and its unlabelled tissue: fat and
muscle wall, lung bases and heart, colon and small bowel."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .grid import _FAR, Array, _box, _extent, _local, _Part, _random_frame


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
