"""A model refused at start-up (today's checks fail on the version an older server installed) can be deleted:
DELETE /admin/model/<name> removes it from `failed`, from /ready's `refused` and from the disk, and it stays
gone after a restart; nothing of its payload ever ran."""

from __future__ import annotations

from conftest import REPO_ROOT
from model_archives import plant_hostile_models

from server.app import create_app
from server.auth import AdminCredentials
from server.registry import ModelRegistry
from server.settings import Settings

APP_DIR = REPO_ROOT / "apps" / "spleen"
ADMIN = ("refused-admin", "refused-delete-test")


def test_a_refused_model_can_be_deleted_and_stays_deleted(tmp_path):
    repo, marker = tmp_path / "repo", tmp_path / "ran"
    repo.mkdir()
    plant_hostile_models(repo, marker)  # alias_reader and setstate, both refused by today's checks
    registry = ModelRegistry.open(repo, APP_DIR, app_models="")
    assert set(registry.failed) == {"alias_reader", "setstate"}
    settings = Settings(
        model_repo=repo,
        log_dir=tmp_path / "logs",
        session_dir=tmp_path / "sessions",
        admin_credentials=AdminCredentials(*ADMIN),
        warm_up=False,
    )
    client = create_app(settings, registry=registry).test_client()
    assert client.get("/ready").get_json()["refused"] == ["alias_reader", "setstate"]

    reply = client.delete("/admin/model/setstate", auth=ADMIN)

    assert reply.status_code == 200, reply.get_json()
    assert reply.get_json() == {"success": True, "deleted": "setstate"}
    assert client.get("/ready").get_json()["refused"] == ["alias_reader"]
    assert set(registry.failed) == {"alias_reader"}
    assert not [p for p in repo.iterdir() if p.name.startswith("setstate@")]  # its files are gone
    assert client.delete("/admin/model/setstate", auth=ADMIN).status_code == 404  # once
    assert client.delete("/admin/model/alias_reader").status_code == 401  # still the admin's only

    again = ModelRegistry.open(repo, APP_DIR, app_models="")
    assert set(again.failed) == {"alias_reader"} and again.list() == []
    assert not marker.exists()
