"""`pip install` of the wheel gives a working `aiaa serve` with the default app, without the checkout.

The wheel is built from a copy of the checkout's files (git's list: no stale `build/` from an earlier build),
installed into a fresh venv that borrows only its dependencies from the project venv (a `.pth` line: a plain
path, so the project's editable install is not seen), and served from a temporary folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest
import requests
from aiaa_helpers import assert_same_grid, parse_result, post, read_mask, to_ijk
from conftest import REPO_ROOT, free_port

from aiaa_core.mask_geometry import dice
from aiaa_core.phantoms import LABELS, make_phantom, write_phantom

pytestmark = pytest.mark.slow

BUILD_TIMEOUT_S = 60
READY_TIMEOUT_S = 60
MODEL = "segmentation_spleen"
# what a fresh venv must import from its own site-packages (the wheel), never from the checkout
PROBE = (
    "import json, aiaa_apps, aiaa_core, server; from server.app_loader import default_app_dir; "
    "print(json.dumps([aiaa_apps.__file__, aiaa_core.__file__, server.__file__, str(default_app_dir())]))"
)


def copy_sources(destination: Path) -> None:
    """The checkout's files as git sees them (tracked and new, never ignored ones) under `destination`."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT, capture_output=True, check=True, timeout=30,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO_ROOT / name
        if source.is_file():  # a file deleted but not yet committed is still listed
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def build_wheel(tmp: Path) -> Path:
    sources, out = tmp / "src", tmp / "wheel"
    copy_sources(sources)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index", "--no-build-isolation",
         "-w", str(out), str(sources)],
        check=True, timeout=BUILD_TIMEOUT_S, capture_output=True,
    )
    (wheel,) = out.glob("aiaa_monai_server-*.whl")
    return wheel


def fresh_venv(tmp: Path, wheel: Path) -> Path:
    """A venv holding only the wheel; its dependencies come from the project venv's site-packages."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True, timeout=30,
    ).stdout.strip()
    (Path(site) / "project_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # --ignore-installed: the project's own (editable) distribution is visible through that path; never
    # touch it, install beside it
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
         "--ignore-installed", str(wheel)],
        check=True, timeout=BUILD_TIMEOUT_S, capture_output=True,
    )
    return venv


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def wait_ready(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"aiaa serve exited ({process.returncode}):\n{log.read_text()[-4000:]}")
        try:
            if requests.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.25)  # polling interval of a bounded wait, not a synchronisation
    raise AssertionError(f"aiaa serve not ready after {READY_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")


def test_wheel_serves_the_default_app(tmp_path):
    started = time.monotonic()
    wheel = build_wheel(tmp_path)
    venv = fresh_venv(tmp_path, wheel)
    run_dir = tmp_path / "run"  # the server's cwd: logs/ and sessions/ land here, not in the checkout
    run_dir.mkdir()

    probe = subprocess.run(
        [str(venv / "bin" / "python"), "-c", PROBE],
        cwd=run_dir, env=clean_env(), capture_output=True, text=True, check=True, timeout=60,
    )
    for path in json.loads(probe.stdout):
        assert Path(path).resolve().is_relative_to(venv.resolve()), f"{path} is not the wheel's (checkout leaked)"

    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("w") as console:
        process = subprocess.Popen(
            [str(venv / "bin" / "aiaa"), "serve", "--host", "127.0.0.1", "--port", str(port),
             "--model-repo", str(tmp_path / "model_repo"), "--models", MODEL, "--engine", "torch"],
            cwd=run_dir, env=clean_env(), stdout=console, stderr=subprocess.STDOUT,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, process, log)
        models = requests.get(f"{url}/v1/models", timeout=10).json()
        assert [m["name"] for m in models] == [MODEL]

        phantom = make_phantom(200_001, spacing=(3.0, 3.0, 3.0))  # a held-out seed (training uses 0..)
        image, _ = write_phantom(phantom, tmp_path, stem="ct")
        files = [("image", (image.name, image.read_bytes()))]
        _, name, data = parse_result(post(url, "segmentation", MODEL, files))
        mask = read_mask(data, name, tmp_path)
        assert_same_grid(mask, phantom.image)
        truth = to_ijk(phantom.label) == LABELS["spleen"]
        assert dice(to_ijk(mask) > 0, truth) > 0.5  # the app's real weights ran, not an empty or random net
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert time.monotonic() - started < 90
