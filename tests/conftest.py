"""Shared fixtures: a real server process on a free loopback port, and the real-data folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from processes import free_port, stop_process

from server.app_loader import import_app

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
STARTUP_TIMEOUT_S = 120


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen
    log_dir: Path
    model_repo: Path
    session_dir: Path
    console: list[str] = field(default_factory=list)  # the process's stderr lines, as they come


def start_server(tmp: Path, *extra: str, env: dict[str, str | None] | None = None) -> LiveServer:
    """Run `aiaa serve` as a child process; return once waitress says it is serving.

    `env` adds to (a value of None: removes from) the server's environment, e.g. AIAA_ADMIN_USER.
    """
    port = free_port()
    environ = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    log_dir, model_repo, session_dir = tmp / "logs", tmp / "model_repo", tmp / "sessions"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--model-repo",
            str(model_repo),
            "--log-dir",
            str(log_dir),
            "--session-dir",
            str(session_dir),
            "--datastore",
            str(tmp / "datastore"),  # the MONAI Label API's images and labels (a test's --datastore wins)
            *extra,
        ],
        cwd=REPO_ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env=environ,
    )
    ended, serving = threading.Event(), threading.Event()
    lines: list[str] = []  # the LiveServer's `console`

    def watch() -> None:  # the server's stderr: readiness, and kept for failure reports
        for line in process.stderr:
            lines.append(line)
            if "Serving on" in line:
                serving.set()
        ended.set()

    threading.Thread(target=watch, daemon=True).start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not serving.wait(0.1):  # wake on readiness; give up when the process ends or the deadline passes
        if ended.is_set() or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("server did not start:\n" + "".join(lines[-40:]))
    return LiveServer(f"http://127.0.0.1:{port}", process, log_dir, model_repo, session_dir, lines)


def generated_admin(server: LiveServer) -> tuple[str, str]:
    """The one-time admin user and password a server without credentials printed on its console."""
    for line in server.console:
        if match := re.search(r"use user '([^']+)' password '([^']+)'", line):
            return match[1], match[2]
    raise AssertionError("the server printed no one-time admin password:\n" + "".join(server.console[-20:]))


def stop_server(server: LiveServer) -> None:
    stop_process(server.process, timeout_s=20)


@pytest.fixture(scope="session")
def live_server(tmp_path_factory) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("server"))
    yield server
    stop_server(server)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real CT data not present at {SHARED_DATA}")
    return SHARED_DATA


# The app's own modules (`lib.infers`, `lib.export`...) for the tests that drive its tasks directly: loaded
# once, through the one loader that may put an app on the import path (server/app_loader.py).
APP_DIR = REPO_ROOT / "apps" / "spleen"
import_app(APP_DIR)
