"""The Redis session store against a real redis-server on a loopback port: a session written by one store
(one API replica) is read whole by another, expiry is Redis' TTL (sliding), and a lost Redis is a 440."""

from __future__ import annotations

import time

import numpy as np
import pytest
import SimpleITK as sitk
from cluster_helpers import RedisServer

from server.errors import ServiceUnavailable, SessionExpired
from server.session_stores import StoreKind, open_session_store
from server.session_stores.redis_store import RedisSessionStore, blocks_key, meta_key
from server.session_stores.volume_blocks import BLOCK_EDGE, image_blocks, image_from_blocks, image_header
from server.settings import Settings

DEADLINE_S = 20


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


def store(redis_server: RedisServer, root, expiry_s: float = 60, max_bytes: int = 2**30) -> RedisSessionStore:
    return RedisSessionStore(redis_server.url, root, expiry_s, expiry_s, max_bytes)


def ct_like(size=(70, 66, 130), seed=0) -> sitk.Image:
    """Sizes that are not multiples of the block edge, a real geometry, CT-like int16 values."""
    voxels = np.random.default_rng(seed).integers(-1024, 2000, size[::-1], dtype=np.int16)
    image = sitk.GetImageFromArray(voxels)
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((-120.5, 33.25, -400.0))
    image.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, -1))
    return image


def assert_same_image(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetPixelID() == b.GetPixelID()
    assert a.GetSize() == b.GetSize() and a.GetNumberOfComponentsPerPixel() == b.GetNumberOfComponentsPerPixel()
    assert (a.GetSpacing(), a.GetOrigin(), a.GetDirection()) == (b.GetSpacing(), b.GetOrigin(), b.GetDirection())
    assert np.array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b))


@pytest.mark.parametrize(
    "image",
    [
        ct_like(),
        sitk.Cast(ct_like((65, 64, 3)), sitk.sitkFloat32),
        sitk.GetImageFromArray(np.arange(130 * 70 * 3, dtype=np.uint8).reshape(130, 70, 3), isVector=True),
    ],
    ids=["int16-3d", "float32-thin", "rgb-2d"],
)
def test_blocks_round_trip(image):
    blocks = dict(image_blocks(image))
    assert all(len(raw) <= BLOCK_EDGE**3 * 4 * 3 for raw in blocks.values())
    assert len(blocks) > 1
    assert_same_image(image_from_blocks(image_header(image), blocks), image)
    with pytest.raises(KeyError):
        image_from_blocks(image_header(image), {k: v for k, v in blocks.items() if k != "0,0,0" and k != "0,0"})


def test_settings_pick_the_store(redis_server, tmp_path):
    memory = open_session_store(Settings(session_dir=tmp_path / "m", redis_url=""))
    shared = open_session_store(Settings(session_dir=tmp_path / "r", redis_url=redis_server.url))
    assert (memory.kind, shared.kind) == (StoreKind.MEMORY, StoreKind.REDIS)
    assert shared.describe()["reachable"] is True and "password" not in str(shared.describe())
    shared.stop()


def test_a_session_written_by_one_replica_is_read_by_another(redis_server, tmp_path):
    a, b = store(redis_server, tmp_path / "a"), store(redis_server, tmp_path / "b")
    image = ct_like()
    upload = tmp_path / "upload"
    upload.mkdir()
    created = a.create(image, upload, "ct.nii.gz", 30)
    assert not upload.exists()  # the upload's files are not kept: the image lives in Redis
    seen = b.get(created.id)
    assert seen is not created and seen.name == "ct.nii.gz" and seen.expiry_s == 30
    assert_same_image(seen.image, image)
    assert b.get(created.id) is seen  # later uses: the local copy, TTL refreshed
    assert 0 < a.redis.ttl(meta_key(created.id)) <= 30 and 0 < a.redis.ttl(blocks_key(created.id)) <= 30
    assert a.delete(created.id) is True
    with pytest.raises(SessionExpired):
        b.get(created.id)  # deleted on A: gone on B too
    assert a.delete(created.id) is False


def test_expiry_is_the_redis_ttl_and_slides(redis_server, tmp_path):
    a, b = store(redis_server, tmp_path / "a", expiry_s=2), store(redis_server, tmp_path / "b", expiry_s=2)
    session = a.create(ct_like((20, 20, 20)), tmp_path / "none", "x", None)
    a.redis.expire(meta_key(session.id), 1)  # nearly expired; a use gives it the full expiry again
    b.get(session.id)
    assert a.redis.ttl(meta_key(session.id)) == 2
    deadline = time.monotonic() + DEADLINE_S
    while a.redis.exists(meta_key(session.id)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not a.redis.exists(meta_key(session.id)) and not a.redis.exists(blocks_key(session.id))
    with pytest.raises(SessionExpired):
        a.get(session.id)  # A's local copy too: Redis is the truth
    assert a.reap() == [] and len(a) == 0


def test_a_full_store_refuses_before_storing(redis_server, tmp_path):
    used = store(redis_server, tmp_path / "probe").stored_bytes()
    small = store(redis_server, tmp_path / "a", max_bytes=used + 2**20)
    before = set(small.redis.scan_iter(match="aiaa:s:*"))
    with pytest.raises(ServiceUnavailable):
        small.create(ct_like((128, 128, 64)), tmp_path / "none", "big", None)  # 2 MiB of int16
    assert set(small.redis.scan_iter(match="aiaa:s:*")) == before and len(small) == 0
    assert small.create(ct_like((20, 20, 20)), tmp_path / "none", "fits", None).id


def test_redis_lost_means_440_then_upload_again(tmp_path):
    server = RedisServer(tmp_path / "redis").start()
    try:
        a = store(server, tmp_path / "a")
        session = a.create(ct_like((30, 30, 30)), tmp_path / "none", "x", None)
        server.restart()  # empty again: every session is gone
        with pytest.raises(SessionExpired):
            a.get(session.id)
        again = a.create(ct_like((30, 30, 30)), tmp_path / "none", "x", None)
        assert store(server, tmp_path / "b").get(again.id).id == again.id
        server.stop()  # unreachable: 440 for a session, 503 for an upload
        with pytest.raises(SessionExpired) as lost:
            a.get(again.id)
        assert "cannot be reached" in lost.value.message
        with pytest.raises(ServiceUnavailable):
            a.create(ct_like((30, 30, 30)), tmp_path / "none", "x", None)
        assert a.describe()["reachable"] is False
    finally:
        server.stop()
