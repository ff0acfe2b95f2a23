"""The repository across crashes and restarts, against a live server: `kill -9` in the middle of an install
leaves the old or the new model (never a half one) and a server that serves; uploads survive restarts; a
deleted app model stays deleted; a replaced model finishes the inference already running on it."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import requests
from admin_helpers import (
    AUTH,
    archive_part,
    mask_reply,
    phantom_file,
    put_model,
    segment,
    served,
    settled_versions,
    start_admin_server,
    two_parts,
    version_folders,
)
from conftest import LiveServer, stop_server
from model_archives import mmar_files, model_bytes, tiny_unet, v4_config, zip_bytes

from server.registry import MARKER

# Many small sliding windows: slow enough (seconds) to observe an install or an inference while it runs.
SLOW = {"spacing": (2.0, 2.0, 2.0), "roi": (16, 16, 16), "overlap": 0.5}
POLL_S = 0.002
DEADLINE_S = 300


class Repo:
    """One model repository and the server process currently serving it (restartable)."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.server: LiveServer = start_admin_server(tmp)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def path(self) -> Path:
        return self.server.model_repo

    def kill(self) -> None:
        self.server.process.kill()  # SIGKILL: no cleanup of any kind runs
        self.server.process.wait()

    def restart(self) -> None:
        self.server = start_admin_server(self.tmp)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = Repo(tmp_path_factory.mktemp("crash"))
    yield repo
    stop_server(repo.server)


@pytest.fixture(scope="module")
def ct(tmp_path_factory):
    return phantom_file(tmp_path_factory.mktemp("ct"), size=(40, 36, 28))[0]


@pytest.fixture(scope="module")
def big_ct(tmp_path_factory):
    """Big enough that SLOW takes seconds on it: several times as long as installing a small model."""
    return phantom_file(tmp_path_factory.mktemp("big_ct"), size=(64, 56, 40))[0]


def wait_for(condition, what: str, *alive: threading.Thread):
    """Poll an observable condition (never a fixed sleep); fail when the work it waits on ended without it."""
    deadline = time.monotonic() + DEADLINE_S
    while not (found := condition()):
        if (alive and not any(t.is_alive() for t in alive)) or time.monotonic() > deadline:
            pytest.fail(f"never observed: {what}")
        time.sleep(POLL_S)
    return found


def in_background(target, *args) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def run():
        try:
            result["reply"] = target(*args)
        except requests.RequestException as exc:
            result["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def mmar_upload(labels: tuple[str, ...], **config) -> dict:
    return archive_part("m.zip", zip_bytes(mmar_files(v4_config(labels=labels, **config))))


def staging_busy(repo: Repo) -> bool:
    staging = repo.path / ".staging"
    return staging.is_dir() and any(staging.iterdir())


def unmarked_version(repo: Repo, name: str) -> Path | None:
    return next((p for p in version_folders(repo.path, name) if not (p / MARKER).exists()), None)


@pytest.mark.parametrize("moment", ["upload in .staging", "new version loading"])
def test_kill_9_during_an_install_leaves_old_or_new_and_serves(repo, ct, tmp_path, moment):
    assert put_model(repo.url, "victim", mmar_upload(("old",))).status_code == 200
    (old,) = settled_versions(repo.path, "victim")
    thread, _ = in_background(put_model, repo.url, "victim", mmar_upload(("new",), **SLOW))
    if moment == "upload in .staging":
        wait_for(lambda: staging_busy(repo), "the upload in .staging", thread)
    else:
        wait_for(lambda: unmarked_version(repo, "victim"), "the new version folder", thread)
    repo.kill()
    thread.join()
    # Did the new version's marker (the commit point) beat the kill? Then it must be served, else the old one.
    committed = any((p / MARKER).exists() for p in version_folders(repo.path, "victim") if p != old)

    repo.restart()
    assert served(repo.url)["victim"]["labels"] == (["new"] if committed else ["old"])
    (folder,) = version_folders(repo.path, "victim")
    assert (folder / MARKER).is_file()
    assert not (repo.path / ".staging").exists() or not any((repo.path / ".staging").iterdir())
    assert not (repo.path / ".trash").exists() or not any((repo.path / ".trash").iterdir())
    assert all((p / MARKER).is_file() for p in repo.path.iterdir() if "@" in p.name)
    params, _ = segment(repo.url, "victim", ct, tmp_path)
    assert params["label_names"] == {"new" if committed else "old": 1}


def test_uploads_and_deletions_survive_a_restart(repo):
    files = two_parts(v4_config(labels=("kept",)), "model.ts", model_bytes(tiny_unet(), "ts"))
    assert put_model(repo.url, "kept", files).status_code == 200
    assert "segmentation_spleen" in served(repo.url)
    reply = requests.delete(f"{repo.url}/admin/model/segmentation_spleen", auth=AUTH, timeout=60)
    assert reply.status_code == 200
    stop_server(repo.server)
    repo.restart()
    models = served(repo.url)
    assert models["kept"]["labels"] == ["kept"] and models["kept"]["source"] == "mmar"
    assert "segmentation_spleen" not in models  # a deleted app model is not seeded again
    assert version_folders(repo.path, "segmentation_spleen") == []


def test_replace_during_a_running_inference(repo, big_ct, tmp_path):
    assert put_model(repo.url, "swapped", mmar_upload(("old",), **{**SLOW, "overlap": 0.625})).status_code == 200
    replacement = mmar_upload(("new",))  # built beforehand: the swap must land while the inference runs
    with open(big_ct, "rb") as f:
        session = requests.put(f"{repo.url}/session/", files={"image": (big_ct.name, f.read())}, timeout=60).json()
    session_url = f"{repo.url}/session/{session['session_id']}"
    created = session["session_info"]["last_access_ts"]

    def infer():
        return requests.post(
            f"{repo.url}/v1/segmentation",
            params={"model": "swapped", "session_id": session["session_id"]},
            data={"params": "{}"},
            timeout=300,
        )

    inference, result = in_background(infer)
    # The request has taken the model and is reading its session's image: it runs on the old model now.
    wait_for(
        lambda: requests.get(session_url, timeout=60).json()["last_access_ts"] != created,
        "the inference using its session",
        inference,
    )
    replaced = put_model(repo.url, "swapped", replacement)
    assert replaced.status_code == 200 and replaced.json()["labels"] == ["new"]
    assert inference.is_alive(), "the inference ended before the replacement: make SLOW slower"
    assert served(repo.url)["swapped"]["labels"] == ["new"]
    assert len(version_folders(repo.path, "swapped")) == 2  # the old version stays while in use

    inference.join()
    params, _ = mask_reply(result["reply"], big_ct, tmp_path)
    assert params["label_names"] == {"old": 1}  # finished on the model it started with
    wait_for(lambda: len(version_folders(repo.path, "swapped")) == 1, "the old version's removal")
    params, _ = segment(repo.url, "swapped", big_ct, tmp_path)
    assert params["label_names"] == {"new": 1}
