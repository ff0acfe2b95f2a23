"""Training from the clinicians' labels: one job at a time, in its own process, installed only if better.

`POST /monailabel/train/<model>` starts `server.monailabel_api.train_worker` (niced, a bounded number of
threads, killed past its time limit) on the datastore's final labels. The worker measures the served
weights' validation Dice, fine-tunes them through MONAI Label's app contract (the app config's
`trainer()` task, called as `task(request, datastore)`), measures the new weights on the same validation
images through the served inference path, and exports them as an MMAR. Here, when it ends: if the Dice
did not drop, the export is installed through the registry as a new version of the model (`install`:
loaded, smoke-tested, then swapped in atomically; running requests keep the old one), and the weights
it replaced are kept so that `DELETE /monailabel/train/<model>/version` puts them back (again as a new
version). Status is MONAI Label's AsyncTask shape (`id`, `status`, `details`, `result`, timestamps).
The monitor thread is started by the request that starts a job, never by `create_app`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import deque
from enum import StrEnum
from pathlib import Path

from aiaa_core.vocabularies import ModelFormat, ModelType

from ..errors import ApiError, BadRequest, NotFound
from .datastore import AnnotationStore

logger = logging.getLogger(__name__)

MIN_LABELLED = 2  # one image to train on, one to validate on
MAX_EPOCHS = 100
DEFAULT_EPOCHS = 2
MAX_TIME_LIMIT_S = 6 * 3600.0
DEFAULT_TIME_LIMIT_S = 1800.0
DETAIL_LINES = 200  # log lines kept for /train/ (MONAI Label's `details`)
VALIDATION_SHARE = 0.2
APP_WEIGHTS = Path("models") / "model.pt"  # where an app model's version folder keeps its weights (registry)


class JobStatus(StrEnum):
    """MONAI Label's AsyncTask states."""

    RUNNING = "RUNNING"
    DONE = "DONE"
    ERROR = "ERROR"
    STOPPED = "STOPPED"


class TooManyRequests(ApiError):
    status = 429
    type = "TooManyRequests"


def split(image_ids: list[str]) -> tuple[list[str], list[str]]:
    """Deterministic train/validation split of the labelled images: every fifth (at least one) validates."""
    ids = sorted(image_ids)
    count = max(1, round(len(ids) * VALIDATION_SHARE))
    step = len(ids) / count
    val = [ids[int(i * step)] for i in range(count)]
    return [i for i in ids if i not in val], val


class TrainingJobs:
    def __init__(self, root: Path, settings):
        self.root = Path(root)
        self.settings = settings
        self._lock = threading.Lock()
        self._job: dict | None = None
        self._process: subprocess.Popen | None = None
        self._details: deque[str] = deque(maxlen=DETAIL_LINES)
        self._stop_requested = False

    # ------------------------------------------------------------------------------------------ reading

    def trainable(self, registry, name: str) -> Path:
        """The weights training would start from; 400/404 unless `name` is an app segmentation model whose
        served version holds the app's weights or a version trained here."""
        model = registry.get(name)
        if model.type != ModelType.SEGMENTATION:
            raise BadRequest(
                f"'{name}' is a {model.type} model; training from annotations fine-tunes segmentation models."
            )
        history = self._history(name)
        if history and model.folder is not None and model.folder.name == history[-1]["version"]:
            return Path(history[-1]["weights"])
        if model.source == ModelFormat.APP and model.folder is not None and (model.folder / APP_WEIGHTS).is_file():
            return model.folder / APP_WEIGHTS
        raise BadRequest(
            f"'{name}' is served from an upload ({model.source}); training fine-tunes the app's own weights. "
            "Delete the upload (or re-seed the app model) to train it."
        )

    def trainers_info(self, registry) -> dict:
        trainers = {}
        for model in registry.list():
            try:
                self.trainable(registry, model.name)
            except ApiError:
                continue
            trainers[model.name] = {
                "description": f"Fine-tune '{model.name}' on the datastore's final labels",
                "config": {"max_epochs": DEFAULT_EPOCHS, "time_limit_s": DEFAULT_TIME_LIMIT_S},
            }
        return trainers

    def stats(self) -> dict:
        with self._lock:
            job = dict(self._job) if self._job else None
        if not job or job["status"] == JobStatus.RUNNING:
            return {}
        return {job["request"]["model"]: job.get("result") or {}}

    def status(self) -> dict | None:
        with self._lock:
            if self._job is None:
                return None
            return {**self._job, "details": list(self._details)}

    def running(self) -> bool:
        with self._lock:
            return self._job is not None and self._job["status"] == JobStatus.RUNNING

    # ----------------------------------------------------------------------------------------- starting

    def start(self, registry, store: AnnotationStore, name: str, params: dict) -> dict:
        epochs, time_limit = checked_request(params)
        start_weights = self.trainable(registry, name)
        labelled = [Path(item["image"]).name.removesuffix(".nii.gz") for item in store.datalist()]
        if len(labelled) < MIN_LABELLED:
            raise BadRequest(
                f"Training needs at least {MIN_LABELLED} images with a final label in the datastore; it has "
                f"{len(labelled)} (PUT /monailabel/datastore/label or PUT /v1/label)."
            )
        train_ids, val_ids = split(labelled)
        with self._lock:
            if self._job is not None and self._job["status"] == JobStatus.RUNNING:
                raise TooManyRequests("A training job is already running; GET /monailabel/train/ for its progress.")
            job_id = time.strftime("%Y%m%d_%H%M%S") + "_" + uuid.uuid4().hex[:6]
            work = self.root / "jobs" / job_id
            work.mkdir(parents=True)
            spec = {
                "app_dir": str(Path(self.settings.app_dir).resolve()),
                "model": name,
                "start_weights": str(Path(start_weights).resolve()),
                "datastore": str(store.root.resolve()),
                "train": train_ids,
                "val": val_ids,
                "work": str(work.resolve()),
                "device": self.settings.device,
                "threads": 1,
                "request": {"max_epochs": epochs},
            }
            (work / "job.json").write_text(json.dumps(spec, indent=2), encoding="utf-8")
            self._details.clear()
            self._stop_requested = False
            self._job = {
                "id": job_id,
                "name": "train",
                "request": {"model": name, "max_epochs": epochs, "time_limit_s": time_limit},
                "status": JobStatus.RUNNING,
                "start_ts": int(time.time()),
                "end_ts": None,
                "result": None,
                "train_images": len(train_ids),
                "val_images": len(val_ids),
            }
            self._process = subprocess.Popen(
                [sys.executable, "-m", "server.monailabel_api.train_worker", str(work / "job.json")],
                cwd=Path(__file__).resolve().parents[2],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"},
                preexec_fn=lambda: os.nice(10),  # noqa: PLW1509 - only sets the child's priority
                start_new_session=True,
            )
            process, job = self._process, dict(self._job)
        threading.Thread(
            target=self._watch, args=(process, work, registry, time_limit), name="aiaa-train", daemon=True
        ).start()
        logger.info("training job %s started for '%s' (%d train, %d validation images)", job_id, name,
                    len(train_ids), len(val_ids))  # fmt: skip
        return job

    def stop(self) -> dict | None:
        with self._lock:
            process = self._process
            self._stop_requested = True
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        return self.status()

    # -------------------------------------------------------------------------------------------- ending

    def _watch(self, process: subprocess.Popen, work: Path, registry, time_limit: float) -> None:
        timer = threading.Timer(time_limit, self._time_out, args=(process,))
        timer.daemon = True
        timer.start()
        try:
            for line in process.stdout:
                self._details.append(line.rstrip()[:500])
            code = process.wait()
        finally:
            timer.cancel()
        try:
            result, status = self._finish(code, work, registry)
        except Exception as exc:  # installing failed: the old version keeps serving
            logger.exception("training job: installing its result failed")
            result, status = {"installed": False, "reason": f"install failed: {exc}"[:300]}, JobStatus.ERROR
        with self._lock:
            if self._job is not None:
                self._job.update(status=status, result=result, end_ts=int(time.time()))
            self._process = None
        logger.info("training job ended: %s (installed: %s)", status, result.get("installed"))

    def _time_out(self, process: subprocess.Popen) -> None:
        if process.poll() is None:
            self._details.append("time limit reached: stopping the job")
            os.killpg(process.pid, signal.SIGKILL)

    def _finish(self, code: int, work: Path, registry) -> tuple[dict, JobStatus]:
        if self._stop_requested:
            return {"installed": False, "reason": "stopped"}, JobStatus.STOPPED
        result_file = work / "result.json"
        if code != 0 or not result_file.is_file():
            return {"installed": False, "reason": f"the training process ended with code {code}"}, JobStatus.ERROR
        result = json.loads(result_file.read_text(encoding="utf-8"))
        before, after = result["dice_before"], result["dice_after"]
        name = result["model"]
        if after < before:
            return {**result, "installed": False, "reason": "validation Dice dropped"}, JobStatus.DONE
        model = self._install(registry, name, Path(result["export"]))
        kept = self.root / "versions" / name / model.folder.name
        kept.mkdir(parents=True)
        shutil.copy2(result["weights"], kept / "model.pt")
        shutil.copy2(result["weights_before"], kept / "before.pt")
        shutil.copytree(result["export_before"], kept / "before")
        self._remember(name, {"version": model.folder.name, "weights": str(kept / "model.pt"),
                              "before": str(kept / "before"), "before_weights": str(kept / "before.pt"),
                              "dice_before": before, "dice_after": after})  # fmt: skip
        return {**result, "installed": True, "version": model.folder.name}, JobStatus.DONE

    @staticmethod
    def _install(registry, name: str, export: Path):
        with registry.staging() as staging:
            folder = staging / "model"
            shutil.copytree(export, folder)
            return registry.install(name, folder, ModelFormat.MMAR)

    # ------------------------------------------------------------------------------------------ rollback

    def rollback(self, registry, name: str) -> dict:
        """Put back the version the last installed training replaced (as a new version)."""
        if self.running():
            raise TooManyRequests("A training job is running; stop it first (DELETE /monailabel/train/).")
        history = self._history(name)
        served = registry.get(name)
        last = history[-1] if history else {}
        if served.folder is None or served.folder.name != last.get("version") or "before" not in last:
            raise NotFound(f"'{name}' is not serving a version trained here; nothing to roll back.")
        model = self._install(registry, name, Path(last["before"]))
        # the restored weights can be trained on again (they are no longer rolled back to anything)
        self._write_history(name, [*history[:-1], {"version": model.folder.name, "weights": last["before_weights"]}])
        return {"model": name, "removed": last["version"], "version": model.folder.name}

    def _history_file(self, name: str) -> Path:
        return self.root / "versions" / name / "history.json"

    def _history(self, name: str) -> list[dict]:
        path = self._history_file(name)
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []

    def _write_history(self, name: str, history: list[dict]) -> None:
        path = self._history_file(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(history, indent=2), encoding="utf-8")
        tmp.replace(path)

    def _remember(self, name: str, entry: dict) -> None:
        self._write_history(name, [*self._history(name), entry])


def checked_request(params: dict) -> tuple[int, float]:
    """The train request's bounded options: `max_epochs` (1..100) and `time_limit_s` (1..6 h)."""
    from .. import params as checked

    epochs = checked.number_value(params.get("max_epochs", DEFAULT_EPOCHS), "max_epochs", minimum=1, maximum=MAX_EPOCHS)
    if epochs != int(epochs):
        raise BadRequest(f"'max_epochs' must be a whole number; got {epochs:g}.")
    limit = checked.number_value(
        params.get("time_limit_s", DEFAULT_TIME_LIMIT_S), "time_limit_s", minimum=1, maximum=MAX_TIME_LIMIT_S
    )
    return int(epochs), limit
