"""The repository's on-disk rules, without a server: what startup keeps and removes after a crash, and how
the app's models are seeded (first start, changed app weights, deleted by an admin, replaced by an upload)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.errors import BadRequest
from server.registry import MARKER, TOMBSTONE, ModelRegistry, check_name


def version(repo: Path, name: str, *, marked: bool = True, deleted: bool = False, fmt: str = "mmar") -> Path:
    folder = repo / name
    (folder / "models").mkdir(parents=True)
    (folder / "models" / "model.ts").write_bytes(b"weights")
    if marked:
        (folder / MARKER).write_text(json.dumps({"name": name.split("@")[0], "format": fmt}))
    if deleted:
        (folder / TOMBSTONE).touch()
    return folder


def test_startup_keeps_the_newest_complete_version_and_removes_the_rest(tmp_path):
    repo = tmp_path / "repo"
    version(repo, "liver@100")
    newest = version(repo, "liver@200")
    version(repo, "liver@300", marked=False)  # an install that was killed before its marker
    version(repo, "spleen@50", marked=False)  # a first install that was killed
    version(repo, "gone@10")
    version(repo, "gone@20", deleted=True)  # deleted; its files were still in use when the server died
    (repo / ".staging" / "tmp123" / "unpacked").mkdir(parents=True)
    (repo / ".trash" / "liver@1.abc").mkdir(parents=True)
    hand_made = version(repo, "hand_made", marked=False)
    (repo / "README.md").write_text("the repository")

    live = ModelRegistry(repo)._recover()

    assert live == {"liver": newest}
    left = sorted(p.name for p in repo.iterdir() if p.name not in (".staging", ".trash"))
    assert left == ["README.md", "hand_made", "liver@200"]
    assert not any((repo / ".trash").iterdir())
    assert not (repo / ".staging").exists()
    assert (hand_made / "models" / "model.ts").is_file()  # never touched: not ours


def app_dir_with(tmp_path: Path, weights: bytes) -> Path:
    app = tmp_path / "app"
    (app / "model").mkdir(parents=True, exist_ok=True)
    (app / "model" / "seg.pt").write_bytes(weights)
    return app


def test_app_models_are_seeded_once_updated_when_the_app_changes_and_stay_deleted(tmp_path):
    app = app_dir_with(tmp_path, b"weights v1")
    registry = ModelRegistry(tmp_path / "repo", app_dir=app)

    first = registry._seed_app_model("seg", None)
    assert (first / "models" / "model.pt").read_bytes() == b"weights v1"
    assert json.loads((first / MARKER).read_text())["format"] == "app"
    assert registry._seed_app_model("seg", first) is None  # up to date: nothing to do

    app_dir_with(tmp_path, b"weights v2")  # `aiaa train seg` wrote new weights
    second = registry._seed_app_model("seg", first)
    assert (second / "models" / "model.pt").read_bytes() == b"weights v2"
    assert not first.exists() and second.name > first.name

    uploaded = version(tmp_path / "repo", "seg@99999999999999999999")  # an admin replaced it with an MMAR
    assert registry._seed_app_model("seg", uploaded) is None

    registry._remember_removed_app_model("seg")
    assert registry._seed_app_model("seg", None) is None
    assert ModelRegistry(tmp_path / "repo", app_dir=app)._removed_app_models() == ["seg"]


def test_no_weights_no_seed(tmp_path):
    app = tmp_path / "app"
    (app / "model").mkdir(parents=True)
    assert ModelRegistry(tmp_path / "repo", app_dir=app)._seed_app_model("seg", None) is None


@pytest.mark.parametrize("name", ["spleen", "Spleen_CT-v2", "a", "x" * 64, "clara.ct.seg"])
def test_good_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", ".hidden", "x" * 65, "a b", "a/b", "a@1", "..", "naïve"])
def test_bad_names(name):
    with pytest.raises(BadRequest, match="not a valid model name"):
        check_name(name)
