"""The served models, each one task with MONAI Label's `BasicInferTask` interface, and the repository they
live in (`model_repo/`), the one list of what this server serves.

Layout: every installed version of a model is its own folder `model_repo/<name>@<id>/`, never changed
after install, so a loaded task can keep reading its files while a newer version replaces it. A version
is complete once its marker `.aiaa-model.json` exists; the marker is written last, atomically, after the
model loaded and passed a test inference. The served version of a name is its newest complete folder; a
marker plus `.aiaa-deleted` means the name was deleted. So a crash (`kill -9`) at any moment leaves,
after restart, either the old or the new version, never a half one: `.staging/`, `.trash/`, unmarked and
superseded folders are removed at startup. Every model is loaded at start-up through today's checks
(`model_formats`): one that fails them is not served, is logged, and is listed in `failed`. A replaced
or deleted version's folder is removed when the last request using it finishes.

The app's models (`apps/spleen`) are seeded into the repository on first start (their weights copied to
`models/model.pt`, loaded through the app's own config classes), so an admin can replace or delete them
like any upload; a deleted app model is remembered in `.removed-app-models.json` and not seeded again.
"""

from __future__ import annotations

import gc
import hashlib
import importlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from monailabel.tasks.infer.basic_infer import BasicInferTask

from aiaa_core.vocabularies import SERVABLE_TYPES, EngineName, ModelFormat, ModelType

from . import __version__
from .errors import ApiError, BadRequest, NotFound

logger = logging.getLogger(__name__)

MARKER = ".aiaa-model.json"
TOMBSTONE = ".aiaa-deleted"
REMOVED_APP_MODELS = ".removed-app-models.json"
STAGING, TRASH = ".staging", ".trash"
NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
VERSION_FOLDER = re.compile(r"(?P<name>[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63})@(?P<id>\d+)")
APP_WEIGHTS = Path("models") / "model.pt"

RETIRED_SWEEP_S = 2.0  # how often to look for replaced versions kept alive only by reference cycles

# The test inference every install runs: a small CT-like volume and the inputs each model type needs.
SMOKE_SIZE = (48, 40, 32)
SMOKE_SPACING = (2.0, 2.0, 3.0)


@dataclass
class ServedModel:
    """One servable model: its task and the model object `/v1/models` shows."""

    name: str
    task: BasicInferTask
    source: str
    version: str = __version__
    folder: Path | None = field(default=None, compare=False)  # its version folder in the repository

    @property
    def type(self) -> str:
        task_type = self.task.type  # MONAI Label's InferType is a str Enum: serve its value
        return task_type.value if isinstance(task_type, Enum) else str(task_type)

    @property
    def labels(self) -> list[str]:
        labels = self.task.labels
        if isinstance(labels, dict):
            return [name for name, _ in sorted(labels.items(), key=lambda item: item[1])]
        return list(labels or [])

    def info(self) -> dict:
        return {
            "name": self.name,
            "type": self.type,
            "labels": self.labels,
            "description": self.task.description,
            "version": self.version,
            "dimension": self.task.dimension,
            "engine": getattr(self.task, "engine", EngineName.TORCH),
            "source": self.source,
            "status": "ready",
            **getattr(self.task, "model_info", {}),
        }


def check_name(name: str) -> str:
    if not NAME.fullmatch(name or ""):
        raise BadRequest(
            f"'{name}' is not a valid model name: use 1 to 64 of the characters A-Z a-z 0-9 _ . - "
            "(not starting with a dot)."
        )
    return name


def _app_configs(app_dir: Path):
    app_dir = app_dir.resolve()
    if str(app_dir) not in sys.path:
        sys.path.insert(0, str(app_dir))
    return importlib.import_module("lib.configs")


def app_model_names(app_dir: Path, models: str = "all") -> list[str]:
    """The app's model names that `models` ("all" or comma separated names) selects (parsed by the app)."""
    try:
        return _app_configs(app_dir).model_names(models)
    except ValueError as error:
        raise ValueError(f"{error} (app {app_dir})") from None


def app_model(app_dir: Path, name: str, weights: Path, served_name: str | None = None) -> ServedModel:
    """One of the app's models, built by the app's own config class, with its weights read from `weights`."""
    config = _app_configs(app_dir).load_configs(str(weights.parent), {"models": name})[name]
    config.path = str(weights)
    return ServedModel(name=served_name or name, task=config.infer(), source=ModelFormat.APP)


def load_app_models(app_dir: Path, models: str = "all") -> list[ServedModel]:
    """The app's models with the weights of the app's own `model/` folder (benchmarks, tests)."""
    served = []
    for name in app_model_names(app_dir, models):
        weights = app_dir / "model" / f"{name}.pt"
        if not weights.is_file():
            logger.warning("not serving '%s': no weights at %s (run `aiaa train %s`)", name, weights, name)
            continue
        served.append(app_model(app_dir, name, weights))
    return served


def smoke_image() -> sitk.Image:
    """A small CT-like volume: air around a soft-tissue body holding a brighter ellipsoid."""
    i, j, k = np.meshgrid(*(np.linspace(-1, 1, n) for n in SMOKE_SIZE), indexing="ij")
    body = (i**2 + j**2 < 0.8).astype(np.float32)
    organ = ((i / 0.4) ** 2 + (j / 0.3) ** 2 + (k / 0.5) ** 2 < 1).astype(np.float32)
    hu = -1000 + 1040 * body + 80 * organ
    image = sitk.GetImageFromArray(hu.transpose(2, 1, 0).astype(np.int16))
    image.SetSpacing(SMOKE_SPACING)
    return image


def smoke_inputs(model_type: str) -> dict:
    lo = [n // 4 for n in SMOKE_SIZE]
    hi = [n - 1 - n // 4 for n in SMOKE_SIZE]
    mid = [n // 2 for n in SMOKE_SIZE]
    if model_type == ModelType.ANNOTATION:  # the six extreme points of a box inside the volume
        points = []
        for axis in range(3):
            for end in (lo, hi):
                point = list(mid)
                point[axis] = end[axis]
                points.append(point)
        return {"points": points}
    if model_type == ModelType.DEEPGROW:
        return {"foreground": [mid], "background": []}
    return {}


def smoke_test(model: ServedModel, device: str) -> None:
    """Run the model once on a small synthetic volume; any failure is the upload's fault (400)."""
    from .inference import run_model  # inference imports this module

    if model.type not in SERVABLE_TYPES:
        raise BadRequest(
            f"Model '{model.name}' has type '{model.type}'; this server runs {', '.join(SERVABLE_TYPES)} models."
        )
    try:
        run_model(model, smoke_image(), smoke_inputs(model.type), device=device)
    except ApiError:
        raise
    except Exception as exc:
        logger.warning("model '%s' failed its test inference", model.name, exc_info=True)
        while exc.__cause__ is not None:  # MONAI wraps the real error in "applying transform ..."
            exc = exc.__cause__
        detail = (str(exc).strip().splitlines() or [""])[0][:300]
        raise BadRequest(
            f"Model '{model.name}' loaded but failed a test inference on a small synthetic volume "
            f"({type(exc).__name__}: {detail}); nothing was installed."
        ) from None


def _write_json_atomically(path: Path, value) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024**2):
            digest.update(chunk)
    return digest.hexdigest()


def _copy_tree(src: Path, dst: Path) -> None:
    """Copy a version folder (hard links where the filesystem allows: versions are never modified)."""

    def link_or_copy(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link_or_copy, ignore=shutil.ignore_patterns(MARKER, TOMBSTONE))


class ModelRegistry:
    """Thread-safe: requests read a snapshot dict, installs swap in a new one; one install per name at a time."""

    def __init__(
        self,
        model_repo: Path,
        models: list[ServedModel] | None = None,
        *,
        app_dir: Path | None = None,
        device: str = "cpu",
    ):
        self.root = Path(model_repo)
        self.app_dir = app_dir
        self.device = device
        self.root.mkdir(parents=True, exist_ok=True)
        self._models: dict[str, ServedModel] = {m.name: m for m in models or []}
        self.failed: dict[str, str] = {}  # name → why its installed version was not served at start-up
        self._write_lock = threading.Lock()
        self._name_locks: dict[str, threading.RLock] = {}
        self._last_id = 0
        self._retired: list[weakref.ref] = []  # replaced or deleted versions still referenced somewhere
        self._retired_added = threading.Event()
        self._sweeper: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------- reading

    def list(self) -> list[ServedModel]:
        return list(self._models.values())

    def get(self, name: str | None) -> ServedModel:
        if not name:
            raise NotFound("No model named: add ?model=<name> (GET /v1/models lists them).")
        try:
            return self._models[name]
        except KeyError:
            raise NotFound(
                f"Model '{name}' is not on this server; available: {', '.join(sorted(self._models)) or 'none'}."
            ) from None

    def stored_config(self, name: str) -> dict:
        """The config the model was installed with (`config_aiaa.json`, a bundle's inference config)."""
        model = self.get(name)
        if model.folder is None:
            raise NotFound(f"Model '{name}' has no stored config.")
        marker = self._marker(model.folder)
        if marker["format"] == ModelFormat.APP:
            return {"source": ModelFormat.APP, "model": marker["model"], **model.info()}
        path = self._config_path(model.folder, marker["format"])
        text = path.read_text(encoding="utf-8")
        if path.suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text)
        return json.loads(text)

    # ------------------------------------------------------------------------------------------ startup

    @classmethod
    def open(cls, model_repo: Path, app_dir: Path, app_models: str = "all", device: str = "cpu") -> ModelRegistry:
        """Recover the repository after any crash, seed the app's models on first start, load every model."""
        registry = cls(model_repo, app_dir=app_dir, device=device)
        folders = registry._recover()
        for name in app_model_names(app_dir, app_models):
            seeded = registry._seed_app_model(name, folders.get(name))
            if seeded is not None:
                folders[name] = seeded
        models = {}
        for name, folder in sorted(folders.items()):
            try:  # today's rules: a model installed under older ones that fails them now is never run
                models[name] = registry._load(folder, name)
            except ApiError as error:
                registry.failed[name] = error.message
                logger.error("not serving '%s': %s fails the checks of this version: %s", name, folder.name, error)
            except Exception as error:
                registry.failed[name] = f"does not load ({type(error).__name__})"
                logger.exception("not serving '%s': its folder %s does not load", name, folder)
        registry._models = models
        logger.info("serving %d model(s) from %s: %s", len(models), registry.root, ", ".join(models))
        return registry

    def _recover(self) -> dict[str, Path]:
        """Clean up after a crash; return each live name's newest complete version folder."""
        for leftover in (STAGING, TRASH):
            shutil.rmtree(self.root / leftover, ignore_errors=True)
        versions: dict[str, list[tuple[int, Path]]] = {}
        for entry in self.root.iterdir():
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            match = VERSION_FOLDER.fullmatch(entry.name)
            if match is None:
                logger.warning("ignoring %s: not a model installed by this server (use PUT /admin/model/<name>)", entry)
            elif not (entry / MARKER).is_file():
                logger.warning("removing %s: an install that did not finish", entry)
                self._discard(entry)
            else:
                versions.setdefault(match["name"], []).append((int(match["id"]), entry))
                self._last_id = max(self._last_id, int(match["id"]))
        live = {}
        for name, found in versions.items():
            found.sort()
            for _, superseded in found[:-1]:
                self._discard(superseded)
            newest = found[-1][1]
            if (newest / TOMBSTONE).exists():
                self._discard(newest)
            else:
                live[name] = newest
        return live

    def _seed_app_model(self, name: str, current: Path | None) -> Path | None:
        """Copy an app model's weights into the repository (first start, or when the app's weights changed)."""
        assert self.app_dir is not None
        weights = self.app_dir / "model" / f"{name}.pt"
        if name in self._removed_app_models():
            return None
        if not weights.is_file():
            if current is None:
                logger.warning("not serving '%s': no weights at %s (run `aiaa train %s`)", name, weights, name)
            return None
        digest = _sha256(weights)
        if current is not None:
            marker = self._marker(current)
            if marker.get("format") != ModelFormat.APP or marker.get("weights_sha256") == digest:
                return None  # an upload replaced it, or it is up to date
            logger.info("'%s': the app's weights changed; updating the repository copy", name)
        with self.staging() as work:
            folder = work / "model"
            (folder / APP_WEIGHTS).parent.mkdir(parents=True)
            shutil.copy2(weights, folder / APP_WEIGHTS)
            self._write_marker(folder, name, ModelFormat.APP, model=name, weights_sha256=digest)
            target = self.root / f"{name}@{self._new_id()}"
            os.rename(folder, target)
        if current is not None:
            self._discard(current)
        return target

    # ----------------------------------------------------------------------------------------- changing

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A private work folder on the repository's filesystem, removed afterwards (and at startup)."""
        (self.root / STAGING).mkdir(exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=self.root / STAGING))
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def install(self, name: str, prepared: Path, fmt: str) -> ServedModel:
        """Load `prepared` (a model folder in `.staging/`), test it, and serve it as `name`, atomically.

        Until the marker is written the new folder is not a model: a failure (or a crash) leaves the
        previous version served. Requests already running keep the previous ServedModel object.
        """
        check_name(name)
        with self._name_lock(name):
            folder = self.root / f"{name}@{self._new_id()}"
            os.rename(prepared, folder)
            try:
                model = self._load(folder, name, fmt)
                smoke_test(model, self.device)
                self._write_marker(folder, name, fmt)
            except BaseException:
                self._discard(folder)
                raise
            self._publish(name, model)
        logger.info("installed model '%s' (%s) from %s", name, fmt, folder.name)
        return model

    def reconfigure(self, name: str, config: dict) -> ServedModel:
        """Install a new version of `name` with the same files and a new config (PATCH)."""
        model = self.get(name)
        marker = self._marker(model.folder) if model.folder else {"format": ModelFormat.APP}
        if marker["format"] == ModelFormat.APP:
            raise BadRequest(
                f"'{name}' is one of the app's models, configured in code; replace it with PUT /admin/model/{name}."
            )
        with self._name_lock(name), self.staging() as work:
            folder = work / "model"
            _copy_tree(model.folder, folder)
            target = self._config_path(folder, marker["format"])
            for stale in target.parent.glob("inference.*") if marker["format"] == ModelFormat.BUNDLE else [target]:
                stale.unlink(missing_ok=True)  # a new file, never a write through a link shared with the old one
            target = target.with_suffix(".json")
            target.write_text(json.dumps(config, indent=2), encoding="utf-8")
            return self.install(name, folder, marker["format"])

    def delete(self, name: str) -> None:
        """Stop serving `name` now and for good; its files go once no request uses them."""
        with self._name_lock(name):
            model = self.get(name)
            if self.app_dir is not None and name in app_model_names(self.app_dir):
                self._remember_removed_app_model(name)  # not seeded again at the next start
            if model.folder is not None:
                (model.folder / TOMBSTONE).touch()
            self._publish(name, None)
        logger.info("deleted model '%s'", name)

    # -------------------------------------------------------------------------------------------- parts

    def _load(self, folder: Path, name: str, fmt: str | None = None) -> ServedModel:
        fmt = fmt or self._marker(folder)["format"]
        if fmt == ModelFormat.APP:
            assert self.app_dir is not None
            model = app_model(self.app_dir, self._marker(folder)["model"], folder / APP_WEIGHTS, served_name=name)
        else:
            from .model_formats import load_model  # the readers build on ServedModel

            model = load_model(folder, name, device=self.device)
        model.folder = folder
        return model

    def _publish(self, name: str, model: ServedModel | None) -> None:
        with self._write_lock:
            self.failed.pop(name, None)
            models = dict(self._models)
            old = models.pop(name, None)
            if model is not None:
                models[name] = model
            self._models = models
        if old is not None and old.folder is not None:
            weakref.finalize(old, self._discard, old.folder)  # once the last request using it is done
            self._retire(old)

    def _retire(self, model: ServedModel) -> None:
        with self._write_lock:
            self._retired.append(weakref.ref(model))
            if self._sweeper is None:
                self._sweeper = threading.Thread(target=self._sweep_retired, name="aiaa-retired", daemon=True)
                self._sweeper.start()
        self._retired_added.set()

    def _sweep_retired(self) -> None:
        """Collect garbage while retired versions live on: a reference cycle (a traceback, a frame kept by a
        library) can hold one after its last request ended, and only the collector frees it (and so runs
        the finalizer that removes its folder)."""
        while True:
            self._retired_added.wait()
            self._retired_added.clear()
            while True:
                gc.collect()
                with self._write_lock:
                    self._retired = [ref for ref in self._retired if ref() is not None]
                    if not self._retired:
                        break
                self._retired_added.wait(RETIRED_SWEEP_S)
                self._retired_added.clear()

    def _discard(self, folder: Path) -> None:
        """Remove a folder: first out of the repository's namespace (atomic), then from the disk."""
        (self.root / TRASH).mkdir(exist_ok=True)
        aside = self.root / TRASH / f"{folder.name}.{uuid.uuid4().hex}"
        try:
            os.rename(folder, aside)
        except FileNotFoundError:
            return
        shutil.rmtree(aside, ignore_errors=True)

    def _name_lock(self, name: str) -> threading.RLock:
        with self._write_lock:
            return self._name_locks.setdefault(name, threading.RLock())

    def _new_id(self) -> int:
        with self._write_lock:
            self._last_id = max(time.time_ns(), self._last_id + 1)
            return self._last_id

    @staticmethod
    def _write_marker(folder: Path, name: str, fmt: str, **extra) -> None:
        marker = {"name": name, "format": fmt, "installed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        _write_json_atomically(folder / MARKER, {**marker, **extra})

    @staticmethod
    def _marker(folder: Path) -> dict:
        return json.loads((folder / MARKER).read_text(encoding="utf-8"))

    @staticmethod
    def _config_path(folder: Path, fmt: str) -> Path:
        if fmt == ModelFormat.MMAR:
            return folder / "config" / "config_aiaa.json"
        for candidate in ("inference.json", "inference.yaml", "inference.yml"):
            if (folder / "configs" / candidate).is_file():
                return folder / "configs" / candidate
        return folder / "configs" / "inference.json"

    def _removed_app_models(self) -> list[str]:
        path = self.root / REMOVED_APP_MODELS
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []

    def _remember_removed_app_model(self, name: str) -> None:
        removed = self._removed_app_models()
        if name not in removed:
            _write_json_atomically(self.root / REMOVED_APP_MODELS, [*removed, name])
