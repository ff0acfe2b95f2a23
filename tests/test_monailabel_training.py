"""The app trains under MONAI Label's own machinery: stock `monailabel start_server` runs POST
/train/segmentation_spleen (its background process, `app.train(request)`) on a datastore label, and
`aiaa train` runs the same trainer from the command line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import torch
from conftest import REPO_ROOT
from monailabel.utils.others.class_utils import get_class_of_subclass_from_file
from monailabel_server import stock_monailabel

from aiaa_core.phantoms import make_phantom, write_phantom
from lib.networks import segmentation_network
from server.app_loader import import_app

pytestmark = pytest.mark.slow

TRAIN_TIMEOUT_S = 300  # the tiny run takes ~20-40 s on one thread; MONAI Label's process also loads the app
TINY = {
    "name": "tiny",
    "max_epochs": 1,
    "steps_per_epoch": 2,
    "num_train_phantoms": 1,
    "num_val_phantoms": 1,
    "crop_size": 32,
    "publish": False,
}


def one_thread_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def copy_app(target: Path) -> Path:
    """The app (code and weights) in `target`, so runs and stats land there, not in the checkout."""
    source = REPO_ROOT / "apps" / "spleen"
    app = target / "spleen"
    shutil.copytree(source / "lib", app / "lib", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(source / "main.py", app / "main.py")
    (app / "model").mkdir()
    for weights in (source / "model").glob("*.pt"):
        shutil.copy(weights, app / "model" / weights.name)
    return app


def labelled_studies(folder: Path) -> Path:
    """A MONAI Label datastore with one image and its final label (what a clinician's saved label is)."""
    phantom = make_phantom(400_000, size=(80, 72, 48), spacing=(4.0, 4.0, 4.0), orientation="LPS")
    image, label = write_phantom(phantom, folder / "phantom", stem="case")
    (folder / "studies" / "labels" / "final").mkdir(parents=True)
    shutil.copy(image, folder / "studies" / "case.nii.gz")
    shutil.copy(label, folder / "studies" / "labels" / "final" / "case.nii.gz")
    return folder / "studies"


@pytest.fixture(scope="module")
def stock_server(tmp_path_factory):
    """`monailabel start_server` on the app copy, segmentation_spleen only, on a free loopback port."""
    tmp = tmp_path_factory.mktemp("monailabel_train")
    app, studies = copy_app(tmp), labelled_studies(tmp)
    extra = ("--conf", "models", "segmentation_spleen")
    with stock_monailabel(app, studies, *extra, cwd=tmp, env=one_thread_env()) as (url, lines):
        yield url, app, lines


def test_stock_monailabel_trains_on_a_datastore_label(stock_server):
    url, app, lines = stock_server
    info = requests.get(f"{url}/info/", timeout=30).json()
    assert "segmentation_spleen" in info["trainers"]
    served = (app / "model" / "segmentation_spleen.pt").read_bytes()

    reply = requests.post(f"{url}/train/segmentation_spleen", json=TINY, timeout=30)
    assert reply.status_code == 200, reply.text[:500]
    deadline, task = time.monotonic() + TRAIN_TIMEOUT_S, {}
    while time.monotonic() < deadline:  # poll MONAI Label's task status until the run ends
        task = requests.get(f"{url}/train/", timeout=30).json()
        if task.get("status") in ("DONE", "ERROR", "STOPPED"):
            break
        time.sleep(1.0)
    assert task.get("status") == "DONE", "".join(lines[-60:])

    stats = requests.get(f"{url}/info/", timeout=30).json()["train_stats"]["segmentation_spleen"]
    assert stats["finished"] and stats["epochs"] == 1 and len(stats["history"]) == 1
    assert stats["datastore_train"] == 1  # the clinician's label was in the training data
    assert 0.0 <= stats["baseline_val_dice"] <= stats["best_val_dice"] <= 1.0
    assert stats["baseline_val_dice"] > 0.5  # it started from the served weights (pretrained)
    weights = app / "model" / "segmentation_spleen" / "tiny" / "model.pt"
    assert Path(stats["weights"]) == weights.resolve() or Path(stats["weights"]) == weights
    segmentation_network().load_state_dict(torch.load(weights, weights_only=True))
    assert (app / "model" / "segmentation_spleen.pt").read_bytes() == served  # publish: false


def test_app_train_through_monai_labels_app_contract(tmp_path):
    """What our server's /train/ does: the app built through server.app_loader and MONAI Label's own loader,
    `app.train(request)` with runs kept outside the app folder (conf `train_dir`)."""
    torch.set_num_threads(1)
    app_dir = REPO_ROOT / "apps" / "spleen"
    import_app(app_dir)
    app_class = get_class_of_subclass_from_file("main", str(app_dir / "main.py"), "MONAILabelApp")
    conf = {"models": "segmentation_spleen", "train_dir": str(tmp_path / "runs")}
    app = app_class(app_dir=str(app_dir), studies=str(labelled_studies(tmp_path)), conf=conf)
    assert set(app.info()["trainers"]) == {"segmentation_spleen"}
    served = (app_dir / "model" / "segmentation_spleen.pt").read_bytes()

    report = app.train({"model": "segmentation_spleen", **TINY, "val_split": 0.0})
    assert report["finished"] and report["datastore_train"] == 1 and report["history"][0]["epoch"] == 1
    assert report["best_val_dice"] == max(report["baseline_val_dice"], report["history"][0]["val_dice"])
    weights = tmp_path / "runs" / "segmentation_spleen" / "tiny" / "model.pt"
    assert Path(report["weights"]) == weights and report["published"] is None
    segmentation_network().load_state_dict(torch.load(weights, weights_only=True))
    assert app.info()["train_stats"]["segmentation_spleen"]["best_val_dice"] == report["best_val_dice"]
    assert (app_dir / "model" / "segmentation_spleen.pt").read_bytes() == served


def test_aiaa_train_cli_runs_the_same_trainer(tmp_path):
    output = tmp_path / "seg.pt"
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "train", "segmentation_spleen", "--epochs", "1", "--steps", "2"]
        + ["--seed", "3", "--output", str(output)],
        cwd=REPO_ROOT,
        env=one_thread_env(),
        capture_output=True,
        text=True,
        timeout=TRAIN_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "best validation Dice" in done.stdout and str(output) in done.stdout
    segmentation_network().load_state_dict(torch.load(output, weights_only=True))
    stats = (tmp_path / "seg" / "train_stats.json").read_text()
    assert '"finished": true' in stats and '"epochs": 1' in stats
