"""Training from the clinicians' labels: one job at a time, in its own process, installed only if not worse.

`POST /monailabel/train/<model>` starts `server.monailabel_api.train_worker` (niced, one thread, killed if
it outlives its time limit) on the datastore's final labels. The worker fine-tunes the served weights
through MONAI Label's app contract (the app config's `trainer()` task, called as `task(request,
datastore)`), which validates the starting weights first and keeps the best epoch's. Here, when it ends:
if the validation Dice did not drop, the weights are installed through the registry as a new version of
the app model (`install`: loaded by the app's own config, smoke-tested, swapped in atomically; running
requests keep the old one; its marker names the version, so `/v1/models` shows it), and the weights it
replaced are kept so that `DELETE /monailabel/train/<model>/version` puts them back (as a new version).
Status is MONAI Label's AsyncTask shape (`id`, `status`, `details`, `result`, timestamps). The monitor
thread is started by the request that starts a job, never by `create_app`.
"""

from __future__ import annotations

import json
import logging
import os
import re
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

from .. import __version__
from ..errors import ApiError, BadRequest, NotFound
from ..model_formats.app import APP_WEIGHTS
from .datastore import AnnotationStore

logger = logging.getLogger(__name__)

MIN_LABELLED = 2  # one image to train on, one to validate on
MAX_EPOCHS = 100
DEFAULT_EPOCHS = 2
MAX_TIME_LIMIT_S = 6 * 3600.0
DEFAULT_TIME_LIMIT_S = 1800.0
DETAIL_LINES = 200  # log lines kept for /train/ (MONAI Label's `details`)
VALIDATION_SHARE = 0.2
ABSOLUTE_PATH = re.compile(r"(?<![\w.])/[^\s'\",:;)\]}]+")  # kept out of `details`: /train/ tells no server paths
KILL_GRACE_S = 300.0  # past the time limit: the last epoch, validation and the exports


class JobStatus(StrEnum):
    """MONAI Label's AsyncTask states."""

    RUNNING = "RUNNING"
    DONE = "DONE"
    ERROR = "ERROR"
    STOPPED = "STOPPED"


class TooManyRequests(ApiError):
    status = 429
    type = "TooManyRequests"


def validation_share(labelled: int) -> float:
    """The train task's `val_split` that keeps about a fifth, and at least one, of the labelled images for
    validation (it validates on `int(n * val_split)` of them)."""
    count = max(1, round(labelled * VALIDATION_SHARE))
    return (count + 0.5) / labelled


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
        """The weights training would start from; 400 unless `name` is served as one of the app's
        segmentation models (seeded from the app, or trained here): uploads are not fine-tuned."""
        model = registry.get(name)
        if model.type != ModelType.SEGMENTATION:
            raise BadRequest(f"'{name}' is a {model.type} model; training fine-tunes segmentation models.")
        if model.source == ModelFormat.APP and model.folder is not None and (model.folder / APP_WEIGHTS).is_file():
            return model.folder / APP_WEIGHTS
        raise BadRequest(
            f"'{name}' is served from an upload ({model.source}); training fine-tunes the app's own weights. "
            "Delete the upload (the app's model is then seeded again at the next start) to train it."
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

    def summary(self) -> dict | None:
        """What the dashboard shows: the last job's state, progress lines and outcome (no paths)."""
        status = self.status()
        if status is None:
            return None
        result = status.get("result") or {}
        return {
            "model": status["request"]["model"],
            "status": status["status"],
            "start_ts": status["start_ts"],
            "end_ts": status["end_ts"],
            "progress": [line for line in status["details"] if "epoch" in line or "Dice" in line][-5:],
            **{
                k: result[k]
                for k in ("installed", "improved", "dice_before", "dice_after", "version", "reason")
                if k in result
            },
        }

    def running(self) -> bool:
        with self._lock:
            return self._job is not None and self._job["status"] == JobStatus.RUNNING

    # ----------------------------------------------------------------------------------------- starting

    def start(self, registry, store: AnnotationStore, name: str, params: dict) -> dict:
        options, time_limit = checked_request(params)
        start_weights = self.trainable(registry, name)
        labelled = [Path(item["image"]).name.removesuffix(".nii.gz") for item in store.datalist()]
        if len(labelled) < MIN_LABELLED:
            raise BadRequest(
                f"Training needs at least {MIN_LABELLED} images with a final label in the datastore; it has "
                f"{len(labelled)} (PUT /monailabel/datastore/label or PUT /v1/label)."
            )
        val_split = validation_share(len(labelled))
        val_count = int(len(labelled) * val_split)
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
                "work": str(work.resolve()),
                "device": self.settings.device,
                "threads": 1,
                "request": {**options, "val_split": val_split, "time_limit_s": time_limit},
            }
            (work / "job.json").write_text(json.dumps(spec, indent=2), encoding="utf-8")
            self._details.clear()
            self._stop_requested = False
            self._job = {
                "id": job_id,
                "name": "train",
                "request": {"model": name, **options, "time_limit_s": time_limit},
                "status": JobStatus.RUNNING,
                "start_ts": int(time.time()),
                "end_ts": None,
                "result": None,
                "train_images": len(labelled) - val_count,
                "val_images": val_count,
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
        logger.info("training job %s started for '%s' on %d labelled images", job_id, name, len(labelled))
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
        # the task ends itself after the epoch that passes the limit; the kill is for a stuck process
        timer = threading.Timer(time_limit * 1.2 + KILL_GRACE_S, self._time_out, args=(process,))
        timer.daemon = True
        timer.start()
        try:
            for line in process.stdout:
                self._details.append(ABSOLUTE_PATH.sub("<path>", line.rstrip())[:500])
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
        files = {key: Path(result.pop(key, "")) for key in ("weights", "weights_before")}  # not shown: server paths
        before, after = result["dice_before"], result["dice_after"]
        if after < before:  # the app's task keeps its best epoch, the start (epoch 0) included: a safeguard
            return {**result, "installed": False, "reason": "validation Dice dropped"}, JobStatus.DONE
        name = result["model"]
        replaced = registry.get(name)
        version = f"{__version__}+trained.{work.name}"
        model = self._install(registry, name, files["weights"], version, trained=work.name)
        kept = self.root / "versions" / name / model.folder.name
        kept.mkdir(parents=True)
        shutil.copy2(files["weights_before"], kept / "before.pt")
        entry = {"version": model.folder.name, "before": str(kept / "before.pt"), "before_version": replaced.version}
        self._remember(name, {**entry, "dice_before": before, "dice_after": after})
        improved = result["best_epoch"] > 0  # else the starting weights came back as the new version
        return {**result, "installed": True, "improved": improved, "version": version}, JobStatus.DONE

    @staticmethod
    def _install(registry, name: str, weights: Path, version: str, **note):
        """`weights` as a new version of the app model `name` (its marker: the app model it builds, the app
        weights' digest it derives from, so a restart does not seed the app's weights over it, the version)."""
        base = registry.store.marker(registry.get(name).folder)
        marker = {"model": base.get("model", name), "weights_sha256": base.get("weights_sha256"), "version": version}
        with registry.staging() as staging:
            folder = staging / "model"
            (folder / APP_WEIGHTS).parent.mkdir(parents=True)
            shutil.copy2(weights, folder / APP_WEIGHTS)
            return registry.install(name, folder, ModelFormat.APP, marker={**marker, **note})

    # ------------------------------------------------------------------------------------------ rollback

    def rollback(self, registry, name: str) -> dict:
        """Put back the weights the last installed training replaced (as a new version)."""
        if self.running():
            raise TooManyRequests("A training job is running; stop it first (DELETE /monailabel/train/).")
        history = self._history(name)
        served = registry.get(name)
        last = history[-1] if history else {}
        if served.folder is None or served.folder.name != last.get("version"):
            raise NotFound(f"'{name}' is not serving a version trained here; nothing to roll back.")
        model = self._install(registry, name, Path(last["before"]), last["before_version"], restored=last["version"])
        self._write_history(name, history[:-1])
        return {"model": name, "removed": last["version"], "version": model.version}

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


# The train options a client may set (bounded); the app's trainer has more, which stay at their defaults.
OPTIONS = {
    "max_epochs": (1, MAX_EPOCHS),
    "steps_per_epoch": (1, 1000),
    "num_train_phantoms": (0, 256),
    "num_val_phantoms": (0, 64),
    "crop_size": (16, 128),
    "seed": (0, 2**31 - 1),
}


def checked_request(params: dict) -> tuple[dict, float]:
    """The train request's options, each a whole number within its bounds, `learning_rate` in (0, 1], and
    `time_limit_s` (1 s .. 6 h); MONAI Label's client adds `client_id`, which is ignored. Anything else: 400."""
    from .. import params as checked

    unknown = sorted(set(params) - set(OPTIONS) - {"learning_rate", "time_limit_s", "client_id"})
    if unknown:
        raise BadRequest(f"Unknown train option(s) {unknown[:5]}; this server takes {sorted(OPTIONS)}, "
                         "learning_rate and time_limit_s.")  # fmt: skip
    options: dict = {"max_epochs": DEFAULT_EPOCHS}
    for key, (low, high) in OPTIONS.items():
        if key in params:
            value = checked.number_value(params[key], key, minimum=low, maximum=high)
            if value != int(value):
                raise BadRequest(f"'{key}' must be a whole number; got {value:g}.")
            options[key] = int(value)
    if "crop_size" in options and options["crop_size"] % 8:
        raise BadRequest(
            f"'crop_size' must be a multiple of 8 (the UNet halves it three times); got {options['crop_size']}."
        )
    if "learning_rate" in params:
        options["learning_rate"] = checked.number_value(
            params["learning_rate"], "learning_rate", minimum=1e-8, maximum=1
        )
    limit = checked.number_value(
        params.get("time_limit_s", DEFAULT_TIME_LIMIT_S), "time_limit_s", minimum=1, maximum=MAX_TIME_LIMIT_S
    )
    return options, limit
