"""The training process `server.monailabel_api.training` starts: fine-tune, never install.

    python -m server.monailabel_api.train_worker WORK/job.json      (writes WORK/result.json)

Fine-tuning goes through MONAI Label's app contract: the app config's `trainer()` task, called as
`task(request, datastore)`, warm-started from the served weights, on the datastore's final labels (the
app's trainer adds its phantoms). The task validates the starting weights first (its baseline) and keeps
the weights of the best validation Dice, epoch 0 included, in its run folder (`publish: false`: nothing is
written where the app serves from). The server installs them if the Dice did not drop.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from pathlib import Path

import torch
from monailabel.datastore.local import LocalDatastore

from ..app_loader import app_configs

logger = logging.getLogger("aiaa.train")
SUFFIX = ".nii.gz"


class TrainingSet:
    """The datastore as the train task reads it (`datalist()`: images with a final label), read only."""

    def __init__(self, root: Path):
        self.store = LocalDatastore(str(root), extensions=(f"*{SUFFIX}",), auto_reload=False, read_only=True)

    def datalist(self, full_path: bool = True) -> list[dict]:
        return sorted(self.store.datalist(full_path), key=lambda item: item["image"])

    def status(self) -> dict:
        return self.store.status()


def fine_tune(app_dir: Path, name: str, work: Path, start: Path, request: dict, datastore: TrainingSet) -> dict:
    """Train through the app's MONAI Label train task; return its report (baseline and best Dice, weights)."""
    config = app_configs(app_dir).load_configs(str(work / "model"), {"models": name, "engine": "torch"})[name]
    task = config.trainer(publish_path=str(work / "model" / f"{name}.pt"), load_path=str(start))
    if task is None:
        raise SystemExit(f"the app has no train task for '{name}' (its config's trainer() returned None)")
    report = task({**request, "model": name, "name": "run", "publish": False, "pretrained": True}, datastore)
    return report if isinstance(report, dict) else {}


def run(job_file: Path) -> dict:
    job = json.loads(job_file.read_text(encoding="utf-8"))
    torch.set_num_threads(int(job.get("threads", 1)))
    app_dir, name, work = Path(job["app_dir"]), job["model"], Path(job["work"])
    start = work / "start.pt"
    shutil.copy2(job["start_weights"], start)
    (work / "model").mkdir()
    started = time.time()
    request = {**job["request"], "device": job.get("device", "cpu")}
    print(f"fine-tuning '{name}' from the served weights: {request}", flush=True)
    report = fine_tune(app_dir, name, work, start, request, TrainingSet(Path(job["datastore"])))
    weights = Path(str(report.get("weights", "")))
    if not weights.is_file():
        raise SystemExit("the train task kept no weights")
    trained = work / "trained.pt"
    shutil.copy2(weights, trained)
    result = {
        "model": name,
        "dice_before": round(float(report["baseline_val_dice"]), 4),
        "dice_after": round(float(report["best_val_dice"]), 4),
        "best_epoch": int(report.get("best_epoch", 0)),
        "history": report.get("history", []),
        "datastore_train": report.get("datastore_train"),
        "datastore_val": report.get("datastore_val"),
        "weights": str(trained),
        "weights_before": str(start),
        "seconds": round(time.time() - started, 1),
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
