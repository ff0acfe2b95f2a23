"""The training process `server.monailabel_api.training` starts: fine-tune, measure, export; never install.

    python -m server.monailabel_api.train_worker WORK/job.json      (writes WORK/result.json)

1. Validation Dice of the served weights on the validation images, through the served inference path
   (`server.registry.app_model` + `server.inference.run_model`: the app's own task, mask on the input grid).
2. Fine-tuning through MONAI Label's app contract: the app config's `trainer()` task, called as
   `task(request, datastore)` on the training images, warm-started from the served weights (they are
   copied to where the config reads and publishes its weights, a folder of this job).
3. The same validation Dice of the published weights.
4. MMAR exports (the app's own exporter, `lib.export`) of the new and of the starting weights: the
   server installs the first if the Dice did not drop, and keeps the second for a rollback.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from aiaa_core.mask_geometry import dice
from aiaa_core.volumes import to_array

from ..app_loader import app_configs, import_app_module
from ..image_reading import read_image
from ..inference import run_model
from ..model_formats.weights import load_state_dict
from ..registry import app_model

logger = logging.getLogger("aiaa.train")
SUFFIX = ".nii.gz"


class TrainingSet:
    """What MONAI Label's train tasks read from a datastore (`datalist()`), limited to the training images."""

    def __init__(self, items: list[dict]):
        self.items = items

    def datalist(self, full_path: bool = True) -> list[dict]:
        return [dict(item) for item in self.items]

    def status(self) -> dict:
        return {"total": len(self.items), "completed": len(self.items), "label_tags": {"final": len(self.items)}}


def items(datastore: Path, ids: list[str]) -> list[dict]:
    return [
        {"image": str(datastore / f"{i}{SUFFIX}"), "label": str(datastore / "labels" / "final" / f"{i}{SUFFIX}")}
        for i in ids
    ]


def validation_dice(app_dir: Path, name: str, weights: Path, val: list[dict], device: str) -> float:
    """Mean Dice of the model with `weights` against the final labels (value 1: the model's first label)."""
    model = app_model(app_dir, name, weights)
    scores = []
    for item in val:
        image = read_image([Path(item["image"])])
        truth = to_array(sitk.ReadImage(item["label"])) == 1
        mask, _ = run_model(model, image, {}, device=device)
        scores.append(dice(mask > 0, truth))
    return float(np.mean(scores))


def fine_tune(app_dir: Path, name: str, model_dir: Path, request: dict, train: list[dict]) -> tuple[Path, dict]:
    """Train through the app's MONAI Label train task; return the published weights and the task's stats."""
    config = app_configs(app_dir).load_configs(str(model_dir), {"models": name, "engine": "torch"})[name]
    task = config.trainer()
    if task is None:
        raise SystemExit(f"the app has no train task for '{name}' (its config's trainer() returned None)")
    published = Path(getattr(task, "_publish_path", None) or config.path)
    before = published.stat().st_mtime_ns if published.is_file() else None
    stats = task({**request, "model": name}, TrainingSet(train))
    if not published.is_file() or published.stat().st_mtime_ns == before:
        raise SystemExit("the train task published no new weights (no validation improvement to keep?)")
    return published, stats if isinstance(stats, dict) else {}


def export_mmar(app_dir: Path, name: str, weights: Path, target: Path) -> Path:
    """An MMAR folder (config_aiaa.json + TorchScript) of the app's model with `weights`, by the app's exporter."""
    exporter = import_app_module(app_dir, "lib.export")
    holder = target.with_name(target.name + "-weights")
    holder.mkdir(parents=True)
    shutil.copy2(weights, holder / f"{name}.pt")
    config = app_configs(app_dir).load_configs(str(holder), {"models": name, "engine": "torch"})[name]
    network = config.network
    network.load_state_dict(load_state_dict(weights))
    (target / "config").mkdir(parents=True)
    (target / "models").mkdir()
    config_json = exporter.mmar_config(config.infer())
    (target / "config" / "config_aiaa.json").write_text(json.dumps(config_json, indent=2), encoding="utf-8")
    (target / "models" / "model.ts").write_bytes(exporter.torchscript_bytes(network.eval()))
    shutil.rmtree(holder)
    return target


def run(job_file: Path) -> dict:
    job = json.loads(job_file.read_text(encoding="utf-8"))
    torch.set_num_threads(int(job.get("threads", 1)))
    app_dir, name, work = Path(job["app_dir"]), job["model"], Path(job["work"])
    datastore, device = Path(job["datastore"]), job.get("device", "cpu")
    train, val = items(datastore, job["train"]), items(datastore, job["val"])
    start = work / "start.pt"
    shutil.copy2(job["start_weights"], start)
    started = time.time()
    print(f"validating the served weights on {len(val)} image(s)", flush=True)
    dice_before = validation_dice(app_dir, name, start, val, device)
    print(f"validation Dice before training: {dice_before:.4f}", flush=True)
    model_dir = work / "model"
    model_dir.mkdir()
    shutil.copy2(start, model_dir / f"{name}.pt")  # where the config reads (warm start) and publishes
    request = {**job["request"], "device": device, "val_split": 0.0}
    print(f"training on {len(train)} image(s): {request}", flush=True)
    weights, stats = fine_tune(app_dir, name, model_dir, request, train)
    trained = work / "trained.pt"
    shutil.copy2(weights, trained)
    dice_after = validation_dice(app_dir, name, trained, val, device)
    print(f"validation Dice after training: {dice_after:.4f} (before {dice_before:.4f})", flush=True)
    result = {
        "model": name,
        "dice_before": round(dice_before, 4),
        "dice_after": round(dice_after, 4),
        "weights": str(trained),
        "weights_before": str(start),
        "export": str(export_mmar(app_dir, name, trained, work / "export")),
        "export_before": str(export_mmar(app_dir, name, start, work / "export_before")),
        "train_images": len(train),
        "val_images": len(val),
        "seconds": round(time.time() - started, 1),
        "train_stats": {k: v for k, v in stats.items() if isinstance(v, int | float | str)},
    }
    tmp = work / "result.json.tmp"
    tmp.write_text(json.dumps(result, indent=2), encoding="utf-8")
    tmp.replace(work / "result.json")
    return result


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(message)s")
    result = run(Path(argv[0]))
    print(f"done: Dice {result['dice_before']} -> {result['dice_after']} in {result['seconds']} s", flush=True)


if __name__ == "__main__":
    main()
