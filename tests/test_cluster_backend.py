"""The inference backends without a cluster: the in-process one is today's path, and the Ray Serve reply's
mask (cropped to its foreground, bit-packed when binary) comes back equal to the task's mask."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from aiaa_core.mask_geometry import occupied_range
from server.backends import BackendCollector, BackendKind, InProcessBackend, open_backend
from server.backends.ray_replica import pack_mask, unpack_mask
from server.settings import Settings


def bbox(mask: np.ndarray) -> list:
    extent = occupied_range(mask)
    return [] if extent is None else [extent[0].tolist(), extent[1].tolist()]


@pytest.mark.parametrize("labels", [1, 3])
def test_packed_masks_come_back_equal(labels):
    rng = np.random.default_rng(labels)
    mask = np.zeros((97, 64, 33), np.uint8, order="F")
    mask[20:41, 5:30, 7:19] = rng.integers(0, labels + 1, (21, 25, 12))
    packed = pack_mask(mask, bbox(mask))
    assert packed["bits"] is (labels == 1)
    assert len(packed["data"]) < mask.nbytes / (8 if labels == 1 else 4)  # the crop, not the grid
    back = unpack_mask(packed)
    assert back.dtype == mask.dtype and back.shape == mask.shape and np.array_equal(back, mask)


def test_an_empty_mask_packs_to_nothing():
    mask = np.zeros((10, 11, 12), np.uint8)
    packed = pack_mask(mask, [])
    assert packed["data"] == b"" and np.array_equal(unpack_mask(packed), mask)


def test_the_settings_pick_the_backend(tmp_path):
    assert open_backend(Settings(ray_address="")).kind == BackendKind.IN_PROCESS
    ray_backend = open_backend(Settings(ray_address="127.0.0.1:6380"))
    assert ray_backend.kind == BackendKind.RAY_SERVE
    assert ray_backend.describe() == {
        "kind": "ray-serve",
        "address": "127.0.0.1:6380",
        "connected": False,  # nothing joins the cluster before `start` (aiaa serve) or the first request
        "served_by": [],
    }


def test_replica_metrics_are_labelled_by_replica_and_node():
    class Served(InProcessBackend):
        def served(self):
            return [{"model": "m", "replica": "r1", "node": "a" * 56, "requests": 3, "seconds": 0.5}]

    registry = CollectorRegistry()
    registry.register(BackendCollector(Served()))
    text = generate_latest(registry).decode()
    assert 'aiaa_backend_requests_total{model="m",node="aaaaaaaaaaaa",replica="r1"} 3.0' in text
    assert 'aiaa_backend_seconds_total{model="m",node="aaaaaaaaaaaa",replica="r1"} 0.5' in text
    empty = CollectorRegistry()
    empty.register(BackendCollector(InProcessBackend()))
    assert "replica=" not in generate_latest(empty).decode()
