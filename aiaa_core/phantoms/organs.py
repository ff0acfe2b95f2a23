"""The labelled organs of the phantoms (and the columns: back muscles, canal, great vessels), each a part with
its own seeded shape and contrast-dependent Hounsfield units."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from .body import _Body, _Contrast, _Diaphragm, _Spine, _Spleen
from .grid import _AIR, _FAR, Array, _box, _extent, _frame, _local, _Part, _rotation, _scatter, _tube_ratio
from .labels import LABELS


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
