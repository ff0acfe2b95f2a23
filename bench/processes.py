"""Server processes for the benchmarks: start one, wait until it says it is serving, read its memory."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(process: subprocess.Popen, timeout_s: float = 30) -> None:
    """Stop a child process by its own handle: SIGTERM, then SIGKILL if it has not ended within `timeout_s`.
    The benches and the tests stop every server, Redis and Ray process they started this way."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    output: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    def memory_mb(self) -> dict[str, float]:
        """Resident memory now (`rss`) and at its peak so far (`peak`), in MiB, from /proc."""
        values = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                values["rss" if key == "VmRSS" else "peak"] = int(rest.split()[0]) / 1024
        return values

    def stop(self) -> None:
        stop_process(self.process)


def start(args: list[str], ready: tuple[str, ...], port: int, timeout_s: float = 300) -> Server:
    """Run `python args...` from the repository; return once a line of its output contains one of `ready`."""
    process = subprocess.Popen(
        [sys.executable, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    server = Server(f"http://127.0.0.1:{port}", process)
    serving, ended = threading.Event(), threading.Event()

    def watch() -> None:
        for line in process.stdout:
            server.output.append(line)
            if any(marker in line for marker in ready):
                serving.set()
        ended.set()

    threading.Thread(target=watch, daemon=True).start()
    deadline = time.monotonic() + timeout_s
    while not serving.wait(0.1):
        if ended.is_set() or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"{args[:3]} did not start:\n" + "".join(server.output[-40:]))
    return server


def start_aiaa(tmp: Path, *extra: str) -> Server:
    """`aiaa serve` on a free loopback port with its folders under `tmp`."""
    port = free_port()
    folders = [f"--{name}" for name in ("model-repo", "log-dir", "session-dir")]
    args = ["-m", "server.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    for flag in folders:
        args += [flag, str(tmp / flag.strip("-"))]
    return start([*args, *extra], ("Serving on",), port)


def start_monailabel(studies: Path, *extra: str) -> Server:
    """Stock `monailabel start_server --app apps/spleen --studies DIR` on a free loopback port."""
    port = free_port()
    args = ["-m", "monailabel.main", "start_server", "--app", str(REPO / "apps" / "spleen"), "--studies", str(studies)]
    return start([*args, "--host", "127.0.0.1", "--port", str(port), *extra], ("Uvicorn running on",), port)
