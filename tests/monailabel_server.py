"""Stock `monailabel start_server` on a free loopback port, for the tests that check the app under MONAI
Label's own server (inference in test_monailabel_app.py, training in test_monailabel_training.py)."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import STARTUP_TIMEOUT_S, free_port


@contextmanager
def stock_monailabel(app: Path, studies: Path, *extra: str, cwd: Path, env=None) -> Iterator[tuple[str, list[str]]]:
    """(base URL, the server's output lines so far) while it runs; stopped through its own handle."""
    port = free_port()
    command = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies)]
    command += [*extra, "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    ready, lines = threading.Event(), []

    def watch() -> None:
        for line in process.stdout:
            lines.append(line)
            if "Uvicorn running on" in line or "startup failed" in line:
                ready.set()
        ready.set()

    threading.Thread(target=watch, daemon=True).start()
    if not ready.wait(STARTUP_TIMEOUT_S) or process.poll() is not None or "startup failed" in "".join(lines):
        process.kill()
        raise RuntimeError("monailabel start_server did not start:\n" + "".join(lines[-40:]))
    try:
        yield f"http://127.0.0.1:{port}", lines
    finally:
        process.terminate()
        process.wait(timeout=30)
