"""Polygon geometry: mask ⇄ polygons, vertex drags, 3D propagation (the endpoints: test_polygons_endpoints.py)."""

from __future__ import annotations

import numpy as np
import pytest
from polygon_helpers import disc
from scipy import ndimage
from skimage import draw

from aiaa_core.mask_geometry import dice
from server.polygons import (
    fill_polygon,
    fix_polygon,
    fix_polygon_3d,
    mask_to_polygons,
    move_vertex,
    polygons_to_mask,
    rasterise,
    slice_polygons,
)


def round_trip(mask_ij: np.ndarray, more_points: int = 1) -> np.ndarray:
    return rasterise(slice_polygons(mask_ij, more_points), mask_ij.shape)


# ------------------------------------------------------------------------------------------ geometry


@pytest.mark.parametrize("shape", ["disc", "two blobs"])
def test_round_trip_gives_the_mask_back(shape):
    mask = disc((32, 28), (15, 12), 8)
    if shape == "two blobs":
        mask = disc((32, 28), (8, 7), 5) | disc((32, 28), (22, 19), 4)
    assert len(slice_polygons(mask)) == (1 if shape == "disc" else 2)
    assert np.array_equal(round_trip(mask), mask)  # every vertex kept: exact
    assert dice(round_trip(mask, more_points=2), mask) >= 0.95


def test_round_trip_of_random_masks_fills_only_holes():
    rng = np.random.default_rng(7)
    for _ in range(40):
        mask = rng.random((12, 10)) < rng.uniform(0.2, 0.7)
        polygons = slice_polygons(mask)
        assert len(polygons) == ndimage.label(mask)[1]  # one polygon per (4-connected) blob
        # marching squares separates blobs touching at a corner: the background is 8-connected
        assert np.array_equal(rasterise(polygons, mask.shape), ndimage.binary_fill_holes(mask, np.ones((3, 3))))


def test_fill_polygon_takes_the_voxels_skimage_takes():
    rng = np.random.default_rng(3)
    for _ in range(100):  # random, often self-intersecting polygons partly outside the grid
        polygon = rng.uniform(-4, 16, size=(int(rng.integers(3, 9)), 2))
        expected = np.zeros((11, 13), bool)
        expected[draw.polygon(polygon[:, 0], polygon[:, 1], expected.shape)] = True
        assert np.array_equal(fill_polygon(polygon, expected.shape), expected)


def test_blob_touching_the_border_and_holes():
    ring = disc((20, 20), (10, 10), 7) & ~disc((20, 20), (10, 10), 3)
    edge = np.zeros((10, 10), bool)
    edge[0:4, 6:10] = True  # touches two borders
    assert len(slice_polygons(ring)) == 1  # outer contour only: the hole is filled
    assert np.array_equal(round_trip(ring), disc((20, 20), (10, 10), 7))
    assert np.array_equal(round_trip(edge), edge)


def test_empty_slices_are_empty_lists_and_one_entry_per_slice():
    mask = np.zeros((12, 10, 4), np.uint8)
    mask[3:7, 2:5, 2] = 1
    slices = mask_to_polygons(mask)
    assert len(slices) == 4
    assert slices[0] == [] and slices[1] == [] and slices[3] == []
    assert len(slices[2]) == 1


def test_first_vertex_is_not_repeated():
    for polygon in slice_polygons(disc((20, 20), (9, 10), 6) | disc((20, 20), (2, 2), 1)):
        assert not np.array_equal(polygon[0], polygon[-1])
        assert len(np.unique(polygon, axis=0)) == len(polygon)


def test_more_points_subsamples_the_contour():
    mask = disc((40, 40), (20, 20), 12)
    every = slice_polygons(mask, 1)[0]
    third = slice_polygons(mask, 3)[0]
    assert len(third) == len(every[::3])
    assert np.array_equal(third, every[::3])
    tiny = np.zeros((5, 5), bool)
    tiny[2, 2] = True  # a 4-vertex diamond keeps at least 3 vertices
    assert len(slice_polygons(tiny, 10)[0]) >= 3


def test_vertices_are_j_i_as_the_original_server():
    mask = np.zeros((20, 10, 2), np.uint8)  # [i, j, k]
    mask[2:14, 4:7, 1] = 1  # 12 voxels along i (2..13), 3 along j (4..6)
    (polygon,) = mask_to_polygons(mask)[1]
    assert (polygon[:, 0].min(), polygon[:, 0].max()) == (3.5, 6.5)  # coordinate 0 spans the j range
    assert (polygon[:, 1].min(), polygon[:, 1].max()) == (1.5, 13.5)  # coordinate 1 spans the i range
    assert np.array_equal(polygons_to_mask(mask_to_polygons(mask), mask.shape), mask)


def test_move_vertex_moves_exactly_the_vertex_and_decays_on_neighbours():
    polygon = np.array([[0, 0], [0, 1], [0, 2], [1, 2], [2, 2], [2, 1], [2, 0], [1, 0]], float)
    offset = np.array([3.0, -6.0])
    moved = move_vertex(polygon, 1, offset, 2)
    shift = moved - polygon
    np.testing.assert_allclose(shift[1], offset)
    np.testing.assert_allclose(shift[[0, 2]], [offset * 2 / 3] * 2)
    np.testing.assert_allclose(shift[[7, 3]], [offset / 3] * 2)  # cyclic: vertex 7 neighbours vertex 0
    np.testing.assert_allclose(shift[[4, 5, 6]], 0)
    alone = move_vertex(polygon, 1, offset, 0) - polygon
    np.testing.assert_allclose(alone[1], offset)
    assert np.count_nonzero(alone.any(axis=1)) == 1


def test_fix_polygon_changes_only_the_chosen_polygon():
    first, second = np.array([[0, 0], [0, 4], [4, 4]], float), np.array([[9, 9], [9, 12], [12, 12]], float)
    fixed = fix_polygon([first, second], 1, 2, (1.0, 0.0), 0)
    assert fixed[0] is first
    np.testing.assert_allclose(fixed[1][2], [13, 12])
    np.testing.assert_allclose(fixed[1][:2], second[:2])


def test_3d_propagation_decays_over_slices_at_the_nearest_vertex():
    square = np.array([[0, 0], [0, 10], [10, 10], [10, 0]], float)
    # vertex numbering differs between slices: slice k lists the square starting k vertices later
    slices = [[np.roll(square, -k, axis=0)] for k in range(5)] + [[], [np.roll(square, -6, axis=0)]]
    offset = np.array([-3.0, 6.0])
    fixed = fix_polygon_3d(slices, 3, 0, 0, offset, neighbours=0, neighbour_slices=2)
    corner = slices[3][0][0]  # [10, 10]
    for k, weight in [(1, 1 / 3), (2, 2 / 3), (3, 1.0), (4, 2 / 3)]:
        (polygon,) = fixed[k]
        moved = np.flatnonzero((polygon != slices[k][0]).any(axis=1))
        assert len(moved) == 1 and np.array_equal(slices[k][0][moved[0]], corner)
        np.testing.assert_allclose(polygon[moved[0]], corner + weight * offset)
    assert np.array_equal(fixed[0][0], slices[0][0])  # 3 slices away: beyond the reach
    assert fixed[5] == []  # no polygon 0 on that slice: left alone
    assert np.array_equal(fixed[6][0], slices[6][0])


def test_polygons_to_mask_fills_each_slice_with_j_i_vertices():
    box = np.array([[1.5, 1.5], [1.5, 5.5], [3.5, 5.5], [3.5, 1.5]])  # rows (j) 2..3, columns (i) 2..5
    mask = polygons_to_mask([[], [box], [box + [2, 3], np.array([[0.0, 0.0]])]], (8, 7, 4))
    assert mask.dtype == np.uint8 and mask.shape == (8, 7, 4)
    assert mask[:, :, 0].sum() == 0 and mask[:, :, 3].sum() == 0
    assert np.array_equal(np.argwhere(mask[:, :, 1]).min(0), [2, 2]) and mask[:, :, 1].sum() == 8
    assert np.array_equal(np.argwhere(mask[:, :, 1]).max(0), [5, 3])  # i up to 5, j up to 3
    assert np.array_equal(np.argwhere(mask[:, :, 2]).min(0), [5, 4]) and mask[:, :, 2].sum() == 6  # i 8 clipped
