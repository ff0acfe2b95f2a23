"""Real processes for the cluster tests: Debian's `redis-server` on a free loopback port, stopped and
restarted through its own handle (never by name). `make test` installs redis-server when missing."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis
from conftest import free_port
from processes import stop_process

START_TIMEOUT_S = 20


class RedisServer:
    """One redis-server child process bound to 127.0.0.1, without persistence (a restart starts empty)."""

    def __init__(self, folder: Path):
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: `make redis` installs Debian's (as root)")
        self.binary, self.folder = binary, Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        command = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"]
        command += ["--dir", str(self.folder), "--protected-mode", "yes", "--logfile", str(self.folder / "redis.log")]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:  # ready when it answers PING; give up when it ends or the deadline passes
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start (exit {self.process.poll()})") from None
                time.sleep(0.05)
        client.close()
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout_s=10)
        self.process = None

    def restart(self) -> None:
        """Stop and start on the same port: every session is gone, as after losing Redis."""
        self.stop()
        self.start()


def cluster_phantom(folder: Path, seed: int):
    """An oblique phantom CT written to `folder`: (phantom, path); what the cluster tests upload."""
    from aiaa_core.phantoms import make_phantom, write_phantom

    phantom = make_phantom(seed, size=(96, 84, 56), spacing=(3.5, 3.5, 3.5), orientation="oblique")
    path, _ = write_phantom(phantom, folder, stem="p")
    return phantom, path


def upload(url: str, path: Path) -> str:
    """PUT /session/ with the file at `path` on the API at `url`; the session id."""
    import requests

    reply = requests.put(f"{url}/session/", files={"image": (path.name, path.read_bytes())}, timeout=60)
    assert reply.status_code == 200, reply.text
    return reply.json()["session_id"]
