"""Replicas sharing one model repository, without a server: `ModelRegistry.refresh` follows what another
replica committed (install, replacement, deletion), never an unfinished install; version ids stay unique
between stores on one folder; the polling follower (`server.model_sync`) converges without Redis.
The live two-process case (Redis pub/sub, real uploads) is tests/test_cluster_models.py."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from server.errors import BadRequest, NotFound
from server.model_store import MARKER, SHARED_GRACE_S, ModelStore
from server.model_sync import ModelSync, poll_interval
from server.registry import ModelRegistry, ServedModel
from server.settings import Settings

BOUND_S = 10


class FollowingRegistry(ModelRegistry):
    """The real registry but for the network: a version "loads" as a stub model named after its folder."""

    loads: list[str]
    refuse: set[str]

    def _load(self, folder: Path, name: str, fmt=None, marker=None) -> ServedModel:
        self.loads.append(folder.name)
        assert (folder / MARKER).is_file(), "an unfinished version was loaded"
        if folder.name in self.refuse:
            raise BadRequest("fails the checks")
        return ServedModel(name=name, task=object(), source="mmar", version=folder.name, folder=folder)


def follower(repo: Path) -> FollowingRegistry:
    registry = FollowingRegistry(repo)
    registry.loads, registry.refuse = [], set()
    return registry


def install_elsewhere(repo: Path, name: str, *, commit: bool = True) -> Path:
    """What another replica's install leaves on the shared folder (its own ModelStore object)."""
    store = ModelStore(repo)
    with store.staging() as work:
        prepared = work / "model"
        (prepared / "models").mkdir(parents=True)
        (prepared / "models" / "model.ts").write_bytes(b"weights")
        folder = store.new_version(name, prepared)
    if commit:
        store.commit(folder, name, "mmar")
    return folder


def test_refresh_follows_installs_replacements_and_deletions(tmp_path):
    repo = tmp_path / "repo"
    registry = follower(repo)
    assert registry.refresh() == {"loaded": [], "dropped": [], "refused": []}

    first = install_elsewhere(repo, "liver")
    install_elsewhere(repo, "spleen", commit=False)  # still installing: no marker, never served
    assert registry.refresh()["loaded"] == ["liver"]
    held = registry.get("liver")
    assert held.version == first.name and registry.loads == [first.name]
    with pytest.raises(NotFound):
        registry.get("spleen")

    second = install_elsewhere(repo, "liver")
    assert registry.refresh()["loaded"] == ["liver"]
    assert registry.get("liver").version == second.name
    assert held.folder == first and first.is_dir()  # a running request keeps its model; the installer retires it
    assert registry.refresh()["loaded"] == []  # nothing changed: nothing loads again
    assert registry.loads == [first.name, second.name]

    ModelStore(repo).mark_deleted(second)
    assert registry.refresh()["dropped"] == ["liver"]
    with pytest.raises(NotFound):
        registry.get("liver")
    ModelStore(repo).discard(second)  # the deleting replica removed its folder; the older one is left over
    assert registry.refresh() == {"loaded": [], "dropped": [], "refused": []}  # still deleted, not rolled back
    with pytest.raises(NotFound):
        registry.get("liver")


def test_a_version_that_fails_here_is_refused_once_and_the_old_one_kept(tmp_path):
    repo = tmp_path / "repo"
    registry = follower(repo)
    first = install_elsewhere(repo, "liver")
    registry.refresh()
    bad = install_elsewhere(repo, "liver")
    registry.refuse.add(bad.name)
    assert registry.refresh()["refused"] == ["liver"]
    assert registry.get("liver").version == first.name  # still served
    registry.refresh()
    assert registry.loads.count(bad.name) == 1  # not retried at every sync

    new = install_elsewhere(repo, "kidney")
    registry.refuse.add(new.name)
    assert registry.refresh()["refused"] == ["kidney"]
    assert "kidney" in registry.failed  # listed as refused (an admin can delete or replace it)
    ModelStore(repo).mark_deleted(new)
    assert registry.refresh()["dropped"] == ["kidney"] and "kidney" not in registry.failed


def test_version_ids_are_unique_across_stores_on_one_folder(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    monkeypatch.setattr(time, "time_ns", lambda: 1_000)  # two replicas whose clocks agree to the nanosecond
    first = install_elsewhere(repo, "liver", commit=False)
    second = install_elsewhere(repo, "liver", commit=False)
    assert first != second and first.is_dir() and second.is_dir()
    assert (first / "models" / "model.ts").is_file() and (second / "models" / "model.ts").is_file()


def test_poll_interval_defaults():
    assert poll_interval(Settings()) == 0  # the embedded default: nothing follows anyone
    assert poll_interval(Settings(redis_url="redis://127.0.0.1:1/0")) == 5
    assert poll_interval(Settings(redis_url="redis://127.0.0.1:1/0", model_poll_s=0)) == 0
    assert poll_interval(Settings(model_poll_s=2)) == 2


def test_polling_follower_converges_without_redis(tmp_path):
    repo = tmp_path / "repo"
    registry = follower(repo)
    sync = ModelSync(registry, "", poll_s=0.05)
    sync.start()
    try:
        folder = install_elsewhere(repo, "liver")
        deadline = time.monotonic() + BOUND_S
        while "liver" not in {m.name for m in registry.list()}:
            assert time.monotonic() < deadline, "the poll did not pick up the install"
            time.sleep(0.02)
        assert registry.get("liver").version == folder.name
        assert sync.describe()["via"] == "polling" and sync.describe()["last_sync"] is not None
    finally:
        sync.stop()
        sync.thread.join(timeout=BOUND_S)
    assert not sync.thread.is_alive()


def test_startup_on_a_shared_folder_keeps_the_other_replicas_running_installs(tmp_path):
    repo = tmp_path / "repo"
    running = install_elsewhere(repo, "liver", commit=False)  # another replica is installing it right now
    crashed = install_elsewhere(repo, "kidney", commit=False)
    (repo / ".staging" / "other-replica").mkdir(parents=True)
    (repo / ".staging" / "crashed").mkdir()
    hours_ago = time.time() - 2 * SHARED_GRACE_S
    for old in (crashed, repo / ".staging" / "crashed"):
        os.utime(old, (hours_ago, hours_ago))

    assert ModelStore(repo).recover(shared=True) == {}
    assert running.is_dir() and (repo / ".staging" / "other-replica").is_dir()
    assert not crashed.exists() and not (repo / ".staging" / "crashed").exists()
    assert ModelStore(repo).recover() == {}  # a server of its own: every unfinished install is a crash's
    assert not running.exists() and not (repo / ".staging").exists()
