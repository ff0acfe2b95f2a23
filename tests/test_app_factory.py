"""The app factory holds no process-wide state: two apps with different settings live side by side in one
process, and `create_app` starts no thread (`start_background`, called by `aiaa serve`, does)."""

from __future__ import annotations

import threading

from conftest import REPO_ROOT

from server.app import create_app, start_background
from server.registry import ModelRegistry
from server.settings import Settings

APP_DIR = REPO_ROOT / "apps" / "spleen"


def settings_in(tmp_path, name: str, **changes) -> Settings:
    root = tmp_path / name
    return Settings(
        model_repo=root / "repo",
        session_dir=root / "sessions",
        log_dir=root / "logs",
        app_dir=APP_DIR,
        warm_up=False,
        **changes,
    )


def test_two_apps_keep_their_own_engine_settings(tmp_path):
    """Each app's models resolve their engine by its own settings, whichever app was created last."""
    first = create_app(settings_in(tmp_path, "a", app_models="extreme_points", engine="torch", inference_threads=1))
    second = create_app(
        settings_in(tmp_path, "b", app_models="extreme_points", engine="torchscript", inference_threads=2)
    )
    engine_of = {
        name: app.extensions["aiaa.registry"].get("extreme_points").info()["engine"]
        for name, app in (("first", first), ("second", second))
    }
    assert engine_of == {"first": "torch", "second": "torchscript"}
    assert first.extensions["aiaa.engines"].default == "torch"
    assert [app.extensions["aiaa.scheduler"].threads.total for app in (first, second)] == [1, 2]
    assert first.extensions["aiaa.scheduler"] is not second.extensions["aiaa.scheduler"]


def test_create_app_starts_no_thread_and_start_background_starts_the_reaper(tmp_path):
    before = threading.active_count()
    app = create_app(settings_in(tmp_path, "a"), ModelRegistry(tmp_path / "a" / "repo", []))
    assert threading.active_count() == before
    store = app.extensions["aiaa.sessions"]
    try:
        started = start_background(app)
        assert [t.name for t in started] == ["session-reaper"] and all(t.is_alive() for t in started)
        assert threading.active_count() == before + 1
        assert start_background(app) == []  # once per app
        assert threading.active_count() == before + 1
    finally:
        store.stop()
    for thread in started:
        thread.join(10)
        assert not thread.is_alive()
