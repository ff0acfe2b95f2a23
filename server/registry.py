"""The served models: the one list of what this server serves, kept in a versioned store (`model_store`).

Every model is loaded at start-up through today's checks (its format's `ModelFormatHandler`): one that
fails them is not served, is logged, and is listed in `failed` (an admin can replace it with PUT or
remove it with DELETE). An install loads the new version, chooses its engine (`warm_up`), runs a test
inference (`smoke_test`) and only then commits it; requests already running keep the previous
`ServedModel`, whose folder goes when the last of them finishes.

The app's models (`apps/spleen`) are seeded into the store on first start (their weights copied to
`models/model.pt`, built by the app's own config classes), so an admin can replace or delete them like
any upload; a deleted app model is remembered and not seeded again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path

from aiaa_core.engines import EngineSettings, Pacing
from aiaa_core.vocabularies import ModelFormat

from .errors import ApiError, NotFound
from .model_formats import LoadContext, handler
from .model_formats.app import AppFormat, app_model, app_model_names, load_app_models
from .model_store import MARKER, TOMBSTONE, ModelStore, check_name, copy_version, version_id
from .served_model import ServedModel
from .smoke_test import smoke_image, smoke_inputs, smoke_test

__all__ = [  # the names the server, the benches and the tests import from here
    "MARKER",
    "TOMBSTONE",
    "ModelRegistry",
    "ServedModel",
    "app_model",
    "app_model_names",
    "check_name",
    "load_app_models",
    "smoke_image",
    "smoke_inputs",
]

logger = logging.getLogger(__name__)


class ModelRegistry:
    """Thread-safe: requests read a snapshot dict, installs swap in a new one; one install per name at a time."""

    def __init__(
        self,
        model_repo: Path,
        models: list[ServedModel] | None = None,
        *,
        app_dir: Path | None = None,
        device: str = "cpu",
        engines: EngineSettings | None = None,
    ):
        self.store = ModelStore(model_repo)
        self.root = self.store.root
        self.app_dir = app_dir
        self.device = device
        self.engines = engines if engines is not None else EngineSettings()  # what runs each model's network
        self._models: dict[str, ServedModel] = {m.name: m for m in models or []}
        self.failed: dict[str, str] = {}  # name → why its installed version was not served at start-up
        self._failed_folders: dict[str, Path] = {}  # name → that version's folder (deletable)
        self._write_lock = threading.Lock()
        self._name_locks: dict[str, threading.RLock] = {}
        self._seen: dict[str, int] = {}  # name → newest version id this registry has served or refused
        self._refresh_lock = threading.Lock()
        # Called with (name, "installed" | "deleted") after this registry changed the store (server/model_sync.py
        # tells the other replicas); never raises into the request.
        self.listeners: list[Callable[[str, str], None]] = []

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
        marker = self.store.marker(model.folder)
        return handler(marker["format"]).stored_config(model.folder, model, marker)

    # ------------------------------------------------------------------------------------------ startup

    @classmethod
    def open(
        cls,
        model_repo: Path,
        app_dir: Path,
        app_models: str = "all",
        device: str = "cpu",
        engines: EngineSettings | None = None,
        shared: bool = False,
    ) -> ModelRegistry:
        """Recover the store after any crash, seed the app's models on first start, load every model.
        `shared`: other API replicas use the same folder (`ModelStore.recover` keeps their running installs)."""
        registry = cls(model_repo, app_dir=app_dir, device=device, engines=engines)
        folders = registry._recover(shared)
        for name in app_model_names(app_dir, app_models):
            seeded = registry._seed_app_model(name, folders.get(name))
            if seeded is not None:
                folders[name] = seeded
        models = {}
        for name, folder in sorted(folders.items()):
            try:  # today's rules: a model installed under older ones that fails them now is never run
                models[name] = registry._load(folder, name)
                continue
            except ApiError as error:
                registry.failed[name] = error.message
                logger.error("not serving '%s': %s fails the checks of this version: %s", name, folder.name, error)
            except Exception as error:
                registry.failed[name] = f"does not load ({type(error).__name__})"
                logger.exception("not serving '%s': its folder %s does not load", name, folder)
            registry._failed_folders[name] = folder
        registry._models = models
        registry._seen = {name: version_id(folder) for name, folder in folders.items()}
        logger.info("serving %d model(s) from %s: %s", len(models), registry.root, ", ".join(models))
        return registry

    def _recover(self, shared: bool = False) -> dict[str, Path]:
        return self.store.recover(shared)

    def _seed_app_model(self, name: str, current: Path | None) -> Path | None:
        """Copy an app model's weights into the store (first start, or when the app's weights changed)."""
        assert self.app_dir is not None
        if name in self._removed_app_models():
            return None
        return AppFormat.seed(self.store, self.app_dir, name, current)

    def _removed_app_models(self) -> list[str]:
        return self.store.removed_app_models()

    def _remember_removed_app_model(self, name: str) -> None:
        self.store.remember_removed_app_model(name)

    # ----------------------------------------------------------------------------------------- changing

    def staging(self):
        """A private work folder on the store's filesystem, removed afterwards (and at startup)."""
        return self.store.staging()

    def install(
        self, name: str, prepared: Path, fmt: str, pacing: Pacing | None = None, marker: dict | None = None
    ) -> ServedModel:
        """Load `prepared` (a model folder in `.staging/`), test it, and serve it as `name`, atomically.

        Until the marker is written the new folder is not a model: a failure (or a crash) leaves the
        previous version served. Requests already running keep the previous ServedModel object.
        `marker`: entries its marker keeps beside name and format (an app model's `model`, `weights_sha256`
        and `version` when training installs new weights, server/monailabel_api/training.py).
        """
        check_name(name)
        with self._name_lock(name):
            folder = self.store.new_version(name, prepared)
            try:
                model = self._load(folder, name, fmt, marker)
                if callable(getattr(model.task, "warm_up", None)):
                    model.task.warm_up(self.device)  # the engine choice (checked), before the test inference
                smoke_test(model, self.device, pacing)  # `pacing`: the scheduler's, to let clicks pass
                self.store.commit(folder, name, fmt, **(marker or {}))
            except BaseException:
                self.store.discard(folder)
                raise
            self._publish(name, model)
        logger.info("installed model '%s' (%s, %s) from %s", name, fmt, model.info()["engine"], folder.name)
        self._notify(name, "installed")
        return model

    def reconfigure(self, name: str, config: dict, pacing: Pacing | None = None) -> ServedModel:
        """Install a new version of `name` with the same files and a new config (PATCH)."""
        model = self.get(name)
        fmt = self.store.marker(model.folder)["format"] if model.folder else ModelFormat.APP
        with self._name_lock(name), self.store.staging() as work:
            folder = work / "model"
            if model.folder is not None:
                copy_version(model.folder, folder)
            handler(fmt).write_config(folder, name, config)
            return self.install(name, folder, fmt, pacing)

    def delete(self, name: str) -> None:
        """Stop serving `name` now and for good; its files go once no request uses them. A model refused at
        start-up (`failed`) is deleted too: nothing uses its files, they go at once."""
        with self._name_lock(name):
            refused = self._failed_folders.get(name)
            model = self.get(name) if refused is None else None
            if self.app_dir is not None and name in app_model_names(self.app_dir):
                self._remember_removed_app_model(name)  # not seeded again at the next start
            folder = refused if refused is not None else model.folder
            if folder is not None:
                self.store.mark_deleted(folder)
            self._publish(name, None)
        logger.info("deleted model '%s'", name)
        self._notify(name, "deleted")

    # ---------------------------------------------------------------------------------------- following

    def refresh(self, warm_up: bool = True) -> dict[str, list[str]]:
        """Follow the installs, replacements and deletions other replicas sharing the folder made; return them.

        Read-only on the store: only committed versions load (a version without its marker is never served),
        through the start-up path (`_load`, then the engine choice when `warm_up`). The smoke test is not run
        again: the marker is written only after it passed on the replica that installed the version, with the
        same code. Requests already running keep the model object they hold. Replaced or deleted folders are
        left to the replica that changed them (its `retire`) or the next start's `recover`: other replicas may
        still be using them. A version no newer than one this registry had is never taken up (a deleted name
        whose older, superseded folder is still there stays deleted); one that fails to load is not retried.
        """
        changes: dict[str, list[str]] = {"loaded": [], "dropped": [], "refused": []}
        with self._refresh_lock:
            committed = self.store.committed()
            for name in sorted(set(committed) | set(self._models) | set(self._failed_folders)):
                with self._name_lock(name):
                    change = self._follow(name, committed.get(name), warm_up)
                if change is not None:
                    changes[change].append(name)
        if any(changes.values()):
            logger.info("model repository changed by another replica: %s", changes)
        return changes

    def _follow(self, name: str, newest: Path | None, warm_up: bool) -> str | None:
        """Serve `newest` (the store's committed version of `name`, None: deleted) if it is new here."""
        served = self._models.get(name)
        if served is not None and served.folder is None:
            return None  # not from the store (given to the registry by a test)
        current = served.folder if served is not None else self._failed_folders.get(name)
        if newest == current:
            return None
        if newest is not None and version_id(newest) <= self._seen.get(name, -1):
            if current is None:
                return None  # dropped or refused here already
            newest = None  # the version served here went (deleted), an older one is left over
        if newest is None:
            self._publish(name, None, retire=False)
            return "dropped"
        self._seen[name] = version_id(newest)
        try:
            model = self._load(newest, name)
            if warm_up and callable(getattr(model.task, "warm_up", None)):
                model.task.warm_up(self.device)
        except Exception as error:
            logger.exception("not serving '%s' %s installed by another replica", name, newest.name)
            if served is None:
                with self._write_lock:
                    self.failed[name] = error.message if isinstance(error, ApiError) else "does not load"
                    self._failed_folders[name] = newest
            return "refused"
        self._publish(name, model, retire=False)
        return "loaded"

    def _notify(self, name: str, change: str) -> None:
        for listener in list(self.listeners):
            try:
                listener(name, change)
            except Exception:  # the change is committed; the others still find it by polling
                logger.exception("telling the other replicas that '%s' was %s failed", name, change)

    # -------------------------------------------------------------------------------------------- parts

    def _load(self, folder: Path, name: str, fmt: str | None = None, marker: dict | None = None) -> ServedModel:
        marker = self.store.marker(folder) if (folder / MARKER).is_file() else dict(marker or {})
        fmt = fmt or marker["format"]
        context = LoadContext(device=self.device, app_dir=self.app_dir, engines=self.engines, marker=marker)
        fmt_handler = handler(fmt)
        fmt_handler.validate(folder)  # the layout first (files only), then the checked build
        model = fmt_handler.build(folder, name, context)
        model.folder = folder
        return model

    def _publish(self, name: str, model: ServedModel | None, *, retire: bool = True) -> None:
        """Serve `model` as `name` (None: stop serving it); `retire`: remove the replaced version's folder once
        unused (this registry made the change; not when it follows another replica's, see `refresh`)."""
        with self._write_lock:
            self.failed.pop(name, None)
            refused = self._failed_folders.pop(name, None)
            models = dict(self._models)
            old = models.pop(name, None)
            if model is not None:
                models[name] = model
                if model.folder is not None:
                    self._seen[name] = max(self._seen.get(name, -1), version_id(model.folder))
            self._models = models
        if not retire:
            return
        if old is not None and old.folder is not None:
            self.store.retire(old, old.folder)  # its folder goes once the last request using it is done
        if refused is not None:
            self.store.discard(refused)  # never loaded: nothing uses its files

    def _name_lock(self, name: str) -> threading.RLock:
        with self._write_lock:
            return self._name_locks.setdefault(name, threading.RLock())
