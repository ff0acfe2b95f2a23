"""Polygon editing geometry: mask ⇄ per-slice polygons, and dragging one vertex with its neighbours.

A polygon is a float array of shape (n, 2) of `[row, column]` vertices of an axial slice, which is
`[j, i]` in ITK index terms: the original AIAA server's order, the one MITK's SmartPoly tool swaps back
when it draws (`index[0] = pt[1]`). The 2D functions (`slice_polygons`, `fill_polygon`, `rasterise`) work
on any `[row, column]` array; the 3D ones (`mask_to_polygons`, `polygons_to_mask`) take `[i, j, k]` masks
and hand each slice over transposed, so the axis order is decided in exactly those two places.

Polygons are closed implicitly: the last vertex connects back to the first, which is not repeated.
Contours run along voxel edges (half-integer coordinates between a foreground and a background voxel
centre), so filling them with the voxels whose centres are inside (`fill_polygon`) gives the mask back
exactly when every vertex is kept. Only outer contours are returned: a hole is filled when rasterised.

Work is bounded before anything is allocated: tracing by `plan_tracing` (vertices counted from the
mask's boundary, the foreground box per slice, and the memory it will take), filling by the rows the
edges cross (`check_fill_work`), with temporaries no larger than the polygon's box within the grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from skimage import measure

from .errors import PayloadTooLarge

Polygon = np.ndarray
"""(n, 2) float `[row, column]` vertices (`[j, i]` of an axial slice)."""

MAX_VERTICES = 1_000_000
"""Most polygon vertices one request may trace (mask2polygon) or send (fixpolygon): a 512²×100 CT's spleen
has ~9 000; 1 000 000 take 6-11 s to trace on the 2-core target (skimage holds ~0.5 kB per vertex of the
slice being traced)."""

MAX_SLICE_VOXELS = 4096 * 4096
"""Largest foreground bounding box traced on one slice: skimage copies it as float64 (128 MB here)."""

MAX_ROW_CROSSINGS = 20_000_000
"""Most (edge, grid row) crossings one request may fill: the time bound of rasterising (~1 s per 10⁷)."""

_CROSSINGS_PER_CHUNK = 1 << 20  # crossings handled at once: ~40 MB of temporaries whatever the polygon


def slice_polygons(mask_rc: np.ndarray, more_points: int = 1) -> list[Polygon]:
    """Outer contours of the blobs of one `[row, column]` slice (non-zero = foreground), one per blob.

    `more_points` keeps every N-th contour vertex (about N voxels apart); a polygon keeps at least 3
    vertices so that a small blob is not reduced to a line that encloses nothing.
    """
    padded, offset = _padded_crop(np.asarray(mask_rc) != 0)
    if padded is None:
        return []
    polygons = []
    for contour in measure.find_contours(padded, 0.5):  # bool: skimage's float64 copy is the only one
        contour = contour[:-1]  # closed contours end on their first vertex; list it once
        if signed_area(contour) >= 0:  # marching squares orients holes opposite to outer contours
            continue
        step = max(1, min(more_points, len(contour) // 3))
        polygons.append(contour[::step] + offset)
    return polygons


def _padded_crop(foreground: np.ndarray) -> tuple[np.ndarray | None, tuple[int, int]]:
    """The foreground's bounding box with a one-voxel background margin (which closes the contours of
    blobs touching the border), and the offset from its coordinates to the slice's; None when empty."""
    if not foreground.any():
        return None, (0, 0)
    rows = np.flatnonzero(foreground.any(axis=1))
    cols = np.flatnonzero(foreground.any(axis=0))
    crop = foreground[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    return np.pad(crop, 1), (int(rows[0]) - 1, int(cols[0]) - 1)


@dataclass(frozen=True)
class TracePlan:
    """What tracing a mask's contours will cost, counted without tracing (`plan_tracing`)."""

    vertices: int  # traced on all slices, before thinning (holes included)
    largest_slice_vertices: int
    largest_box: int  # voxels of the largest padded foreground box of one slice
    slice_voxels: int

    @property
    def nbytes(self) -> int:
        """Peak memory: one slice's foreground (bool), its padded box (bool) and skimage's float64 copy of it,
        skimage's segment tuples (~0.5 kB per vertex of the slice), and every kept vertex (array, JSON)."""
        return self.slice_voxels + 10 * self.largest_box + 500 * self.largest_slice_vertices + 48 * self.vertices


def plan_tracing(mask: np.ndarray, max_vertices: int = MAX_VERTICES) -> TracePlan:
    """Cost of `mask_to_polygons` on an `[i, j, k]` mask, one slice at a time (a bool copy of each); 413
    when a slice's foreground box exceeds `MAX_SLICE_VOXELS` or the vertices exceed `max_vertices`. One
    vertex is traced per pair of 4-neighbours that differ."""
    total = largest_slice = largest_box = 0
    for k in range(mask.shape[2]):
        padded, _ = _padded_crop(np.asarray(mask[:, :, k].T) != 0)
        if padded is None:
            continue
        if padded.size > MAX_SLICE_VOXELS:
            raise PayloadTooLarge(
                f"The foreground of slice {k} spans {padded.size} voxels (with a one-voxel margin); contours "
                f"are traced on at most {MAX_SLICE_VOXELS} voxels (4096×4096) per slice."
            )
        vertices = int(np.count_nonzero(padded[1:] != padded[:-1]) + np.count_nonzero(padded[:, 1:] != padded[:, :-1]))
        total += vertices
        if total > max_vertices:
            raise PayloadTooLarge(
                f"The mask's contours have more than {max_vertices} vertices (over {total} by slice {k} of "
                f"{mask.shape[2]}), the limit per request; send a simpler mask or one part of it at a time."
            )
        largest_slice, largest_box = max(largest_slice, vertices), max(largest_box, padded.size)
    return TracePlan(total, largest_slice, largest_box, mask.shape[0] * mask.shape[1])


def mask_to_polygons(mask: np.ndarray, more_points: int = 1) -> list[list[Polygon]]:
    """Polygons of every axial slice k of an `[i, j, k]` mask, in k order, as `[j, i]` vertices; an empty
    slice gives `[]`. For an untrusted mask, `plan_tracing` first."""
    return [slice_polygons(mask[:, :, k].T, more_points) for k in range(mask.shape[2])]  # [j, i]: rows are j


def signed_area(polygon: Polygon) -> float:
    """Shoelace area in `[row, column]` axes: negative for the outer contours `find_contours` returns."""
    r, c = polygon[:, 0], polygon[:, 1]
    return 0.5 * float(np.dot(r[:-1], c[1:]) - np.dot(r[1:], c[:-1]) + r[-1] * c[0] - r[0] * c[-1])


def move_vertex(polygon: Polygon, vertex: int, offset: Sequence[float], neighbours: int) -> Polygon:
    """Move `vertex` by `offset` and its `neighbours` on each side (cyclically) with linearly decaying weight.

    The weight is 1 at the vertex and `1 - t / (neighbours + 1)` at t vertices away, so the drag bends the
    contour smoothly instead of making a spike; vertices further away stay where they are.
    """
    count = len(polygon)
    steps = np.abs(np.arange(count) - vertex)
    steps = np.minimum(steps, count - steps)  # distance along the closed contour
    weights = np.clip(1.0 - steps / float(neighbours + 1), 0.0, None)
    return polygon + weights[:, None] * np.asarray(offset, dtype=float)


def fix_polygon(
    polygons: list[Polygon], polygon_index: int, vertex_index: int, offset: Sequence[float], neighbours: int
) -> list[Polygon]:
    """The slice's polygons with one vertex dragged (see `move_vertex`); the others are unchanged."""
    fixed = list(polygons)
    fixed[polygon_index] = move_vertex(polygons[polygon_index], vertex_index, offset, neighbours)
    return fixed


def fix_polygon_3d(
    slices: list[list[Polygon]],
    slice_index: int,
    polygon_index: int,
    vertex_index: int,
    offset: Sequence[float],
    neighbours: int,
    neighbour_slices: int,
) -> list[list[Polygon]]:
    """Drag a vertex on slice k and spread the edit to slices k±1..k±`neighbour_slices`.

    A slice s away gets the offset times `1 - s / (neighbour_slices + 1)`, applied to its polygon with the
    same index at the vertex nearest to the dragged vertex's original position (vertex numbering differs
    between slices); slices without that polygon are left alone.
    """
    origin = slices[slice_index][polygon_index][vertex_index]
    offset = np.asarray(offset, dtype=float)
    fixed = [list(polygons) for polygons in slices]
    low, high = max(0, slice_index - neighbour_slices), min(len(slices), slice_index + neighbour_slices + 1)
    for k in range(low, high):
        if polygon_index >= len(fixed[k]) or len(fixed[k][polygon_index]) == 0:
            continue
        polygon = fixed[k][polygon_index]
        if k == slice_index:
            vertex = vertex_index
        else:
            vertex = int(np.argmin(np.sum((polygon - origin) ** 2, axis=1)))
        weight = 1.0 - abs(k - slice_index) / (neighbour_slices + 1)
        fixed[k][polygon_index] = move_vertex(polygon, vertex, weight * offset, neighbours)
    return fixed


def _edge_rows(polygon: Polygon, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Per edge (vertex n → n+1), the first grid row it crosses and how many, within 0..rows-1.

    An edge crosses the rows r with min <= r < max: half-open, so a vertex on a row counts once (or
    twice at a turning point, which keeps the parity right), and a horizontal edge crosses none."""
    r0 = polygon[:, 0]
    r1 = np.roll(r0, -1)
    first = np.clip(np.ceil(np.minimum(r0, r1)), 0, rows).astype(np.int64)
    stop = np.clip(np.ceil(np.maximum(r0, r1)), 0, rows).astype(np.int64)
    return first, stop - first


def row_crossings(slices: Sequence[Sequence[Polygon]], rows: int) -> int:
    """How many (edge, grid row) crossings filling these polygons on a grid of `rows` rows costs: O(vertices)."""
    return sum(int(_edge_rows(polygon, rows)[1].sum()) for polygons in slices for polygon in polygons)


def check_fill_work(slices: Sequence[Sequence[Polygon]], rows: int, limit: int = MAX_ROW_CROSSINGS) -> None:
    """413 before filling polygons whose edges cross more grid rows in all than `limit`."""
    crossings = row_crossings(slices, rows)
    if crossings > limit:
        raise PayloadTooLarge(
            f"The polygons' edges cross {crossings} grid rows in all (each edge counts the rows it spans "
            f"within the image); the limit is {limit} per request. Send contours from /v1/mask2polygon."
        )


def fill_into(target: np.ndarray, polygon: Polygon) -> None:
    """OR into the uint8 `[row, column]` array `target` the voxels whose centres lie inside `polygon`
    (even-odd rule); parts outside the grid are clipped.

    The same voxels as `skimage.draw.polygon` but for centres exactly on an edge (never the case for the
    half-integer contours of `slice_polygons`), found from the rows each edge crosses in time proportional
    to the boundary (bounding box × vertices takes 0.3 s for one organ contour on a 512² slice). A voxel
    centre is inside when an odd number of crossings lie left of it, so each crossing toggles a bit at the
    first centre to its right and a running XOR along the row fills the runs. The toggles go straight
    into `target` where the polygon's box is still empty (the usual case: no memory beyond the mask),
    else into one byte per voxel of the box; edges are handled a chunk at a time (toggles commute).
    """
    rows, cols = target.shape
    if len(polygon) < 3:  # fewer vertices enclose nothing
        return
    first, counts = _edge_rows(polygon, rows)
    edges = np.flatnonzero(counts)
    if len(edges) == 0:
        return
    c = polygon[:, 1]
    col_low = int(np.clip(np.floor(c.min()) + 1, 0, cols))  # the centres any crossing can reach
    col_stop = int(np.clip(np.ceil(c.max()), 0, cols))
    if col_stop <= col_low:
        return
    row_low, row_stop = int(first[edges].min()), int((first + counts)[edges].max())
    box = target[row_low:row_stop, col_low:col_stop]
    width = col_stop - col_low
    in_place = not box.any()  # toggles right of the box change no centre: dropped then
    toggles = box if in_place else np.zeros((row_stop - row_low, width + 1), dtype=np.uint8)
    r0, r1, c0, c1 = polygon[:, 0], np.roll(polygon[:, 0], -1), c, np.roll(c, -1)
    ends = np.cumsum(counts[edges])
    splits = np.searchsorted(ends, np.arange(_CROSSINGS_PER_CHUNK, ends[-1], _CROSSINGS_PER_CHUNK), side="right")
    for chunk in np.split(edges, splits):
        if len(chunk) == 0:
            continue
        n = counts[chunk]
        edge = np.repeat(chunk, n)
        row = first[edge] + np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
        col = c0[edge] + (row - r0[edge]) * (c1[edge] - c0[edge]) / (r1[edge] - r0[edge])
        right = np.clip(np.floor(col) + 1, col_low, col_stop).astype(np.int64) - col_low
        if in_place:
            inside = right < width
            row, right = row[inside], right[inside]
        np.bitwise_xor.at(toggles, (row - row_low, right), 1)
    np.bitwise_xor.accumulate(toggles, axis=1, out=toggles)
    if not in_place:
        np.bitwise_or(box, toggles[:, :-1], out=box)


def fill_polygon(polygon: Polygon, shape: tuple[int, int]) -> np.ndarray:
    """Boolean `[row, column]` slice of the voxels whose centres lie inside `polygon` (see `fill_into`)."""
    mask = np.zeros(shape, dtype=np.uint8)
    fill_into(mask, np.asarray(polygon, dtype=float))
    return mask.view(bool)


def rasterise(polygons: list[Polygon], shape: tuple[int, int]) -> np.ndarray:
    """Boolean `[row, column]` slice with every polygon filled (union); parts outside the grid are clipped."""
    mask = np.zeros(shape, dtype=np.uint8)
    for polygon in polygons:
        fill_into(mask, polygon)
    return mask.view(bool)


def polygons_to_mask(slices: list[list[Polygon]], size: tuple[int, int, int]) -> np.ndarray:
    """Binary uint8 `[i, j, k]` mask of `size` with slice k filled from `slices[k]` (`[j, i]` vertices;
    missing slices empty). Fortran-ordered, so each slice is filled in place and the writer needs no copy."""
    mask = np.zeros(size, dtype=np.uint8, order="F")
    for k, polygons in enumerate(slices[: size[2]]):
        slice_ji = mask[:, :, k].T  # a C-contiguous [j, i] view
        for polygon in polygons:
            fill_into(slice_ji, polygon)
    return mask
