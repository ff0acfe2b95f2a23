"""The versioned on-disk model store (`model_repo/`): version folders, commit markers, deletion and clean-up.

Filesystem only: nothing here loads or runs a model. Every installed version of a model is its own folder
`<name>@<id>/`, never changed after install, so a loaded task can keep reading its files while a newer
version replaces it. A version is complete once its marker `.aiaa-model.json` exists; the marker is
written last, atomically. The served version of a name is its newest complete folder; a marker plus
`.aiaa-deleted` means the name was deleted. So a crash (`kill -9`) at any moment leaves, after restart,
either the old or the new version, never a half one: `.staging/`, `.trash/`, unmarked and superseded
folders are removed by `recover`. A replaced or deleted version's folder is removed once the last object
using it is freed (`retire`).
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import BadRequest

logger = logging.getLogger(__name__)

MARKER = ".aiaa-model.json"
TOMBSTONE = ".aiaa-deleted"
REMOVED_APP_MODELS = ".removed-app-models.json"
STAGING, TRASH = ".staging", ".trash"
NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}")
VERSION_FOLDER = re.compile(r"(?P<name>[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63})@(?P<id>\d+)")

# On a folder shared by API replicas, an unfinished install or work folder younger than this may be another
# replica's, still running: start-up keeps it (it is never served: no marker).
SHARED_GRACE_S = 3600.0
RETIRED_SWEEP_S = 2.0  # how often to look for replaced versions kept alive only by reference cycles


def check_name(name: str) -> str:
    """`name` if it is a valid model name (it becomes a folder name), else a 400."""
    if not NAME.fullmatch(name or ""):
        raise BadRequest(
            f"'{name}' is not a valid model name: use 1 to 64 of the characters A-Z a-z 0-9 _ . - "
            "(not starting with a dot)."
        )
    return name


def write_json_atomically(path: Path, value) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1024**2):
            digest.update(chunk)
    return digest.hexdigest()


def recent(path: Path) -> bool:
    """Changed within SHARED_GRACE_S (or gone meanwhile: nothing to remove)."""
    try:
        return time.time() - path.stat().st_mtime < SHARED_GRACE_S
    except FileNotFoundError:
        return True


def version_id(folder: Path) -> int:
    """The id in a version folder's name (`<name>@<id>`): newer versions have larger ids."""
    match = VERSION_FOLDER.fullmatch(folder.name)
    if match is None:
        raise ValueError(f"{folder} is not a version folder")
    return int(match["id"])


def copy_version(src: Path, dst: Path) -> None:
    """Copy a version folder without its marker (hard links where possible: versions are never modified)."""

    def link_or_copy(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link_or_copy, ignore=shutil.ignore_patterns(MARKER, TOMBSTONE))


class ModelStore:
    """One `model_repo/` folder. Thread-safe; callers serialise changes to one name themselves."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._last_id = 0
        self._retired: list[weakref.ref] = []  # replaced or deleted versions still referenced somewhere
        self._retired_added = threading.Event()
        self._sweeper: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------ startup

    def recover(self, shared: bool = False) -> dict[str, Path]:
        """Clean up after a crash; return each live name's newest complete version folder. `shared`: other
        replicas use the folder too, so only what is older than SHARED_GRACE_S counts as left by a crash."""
        for leftover in (STAGING, TRASH):
            if not shared:
                shutil.rmtree(self.root / leftover, ignore_errors=True)
            elif (self.root / leftover).is_dir():
                for entry in (self.root / leftover).iterdir():
                    if not recent(entry):
                        shutil.rmtree(entry, ignore_errors=True)
        versions = self._versions(
            unfinished=lambda folder: None if shared and recent(folder) else self._discard_unfinished(folder)
        )
        live = {}
        for name, found in versions.items():
            for _, superseded in found[:-1]:
                self.discard(superseded)
            newest = found[-1][1]
            if (newest / TOMBSTONE).exists():
                self.discard(newest)
            else:
                live[name] = newest
        return live

    def committed(self) -> dict[str, Path]:
        """Read-only: each live name's newest committed version folder (what `recover` would keep), for a
        replica that follows installs made by others on a shared folder. An install still running (no
        marker yet) and a deleted name (its newest version has the tombstone) are not listed."""
        versions = self._versions(unfinished=None)
        return {name: found[-1][1] for name, found in versions.items() if not (found[-1][1] / TOMBSTONE).exists()}

    def _versions(self, unfinished) -> dict[str, list[tuple[int, Path]]]:
        """Every committed version folder per name, oldest first; `unfinished(folder)` for each unmarked one."""
        versions: dict[str, list[tuple[int, Path]]] = {}
        for entry in self.root.iterdir():
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            match = VERSION_FOLDER.fullmatch(entry.name)
            if match is not None and (entry / MARKER).is_file():
                versions.setdefault(match["name"], []).append((int(match["id"]), entry))
                with self._lock:
                    self._last_id = max(self._last_id, int(match["id"]))
            elif unfinished is None:
                continue  # read-only (a sync): start-up reported it, and another replica may be installing it
            elif match is None:
                logger.warning("ignoring %s: not a model installed by this server (use PUT /admin/model/<name>)", entry)
            else:
                unfinished(entry)
        for found in versions.values():
            found.sort()
        return versions

    def _discard_unfinished(self, folder: Path) -> None:
        logger.warning("removing %s: an install that did not finish", folder)
        self.discard(folder)

    # ----------------------------------------------------------------------------------------- versions

    @contextmanager
    def staging(self) -> Iterator[Path]:
        """A private work folder on the store's filesystem, removed afterwards (and by `recover`)."""
        (self.root / STAGING).mkdir(exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=self.root / STAGING))
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def new_version(self, name: str, prepared: Path) -> Path:
        """Move `prepared` (a folder in `staging()`) to a new version folder of `name`, not yet committed."""
        check_name(name)
        while True:  # reserve the id with an exclusive mkdir: replicas sharing the folder never pick the same
            folder = self.root / f"{name}@{self._new_id()}"
            try:
                folder.mkdir()
                break
            except FileExistsError:
                continue
        os.rename(prepared, folder)  # onto the reserved, empty folder: atomic
        return folder

    @staticmethod
    def commit(folder: Path, name: str, fmt: str, **extra) -> None:
        """Write the marker: from now on `folder` is a complete version (the last step of an install)."""
        marker = {"name": name, "format": fmt, "installed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_json_atomically(folder / MARKER, {**marker, **extra})

    @staticmethod
    def marker(folder: Path) -> dict:
        return json.loads((folder / MARKER).read_text(encoding="utf-8"))

    @staticmethod
    def mark_deleted(folder: Path) -> None:
        """The name is deleted for good, even if the server dies before the folder is removed."""
        (folder / TOMBSTONE).touch()

    def discard(self, folder: Path) -> None:
        """Remove a folder: first out of the store's namespace (atomic), then from the disk."""
        (self.root / TRASH).mkdir(exist_ok=True)
        aside = self.root / TRASH / f"{folder.name}.{uuid.uuid4().hex}"
        try:
            os.rename(folder, aside)
        except FileNotFoundError:
            return
        shutil.rmtree(aside, ignore_errors=True)

    def _new_id(self) -> int:
        with self._lock:
            self._last_id = max(time.time_ns(), self._last_id + 1)
            return self._last_id

    # ---------------------------------------------------------------------------------- removed app models

    def removed_app_models(self) -> list[str]:
        """The app models an admin deleted: never seeded again."""
        path = self.root / REMOVED_APP_MODELS
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []

    def remember_removed_app_model(self, name: str) -> None:
        removed = self.removed_app_models()
        if name not in removed:
            write_json_atomically(self.root / REMOVED_APP_MODELS, [*removed, name])

    # ------------------------------------------------------------------------------------- garbage collection

    def retire(self, user: object, folder: Path) -> None:
        """Remove `folder` once `user` (the replaced or deleted model object) is freed."""
        weakref.finalize(user, self.discard, folder)
        with self._lock:
            self._retired.append(weakref.ref(user))
            if self._sweeper is None:  # started by the first replacement, never by the app factory
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
                with self._lock:
                    self._retired = [ref for ref in self._retired if ref() is not None]
                    if not self._retired:
                        break
                self._retired_added.wait(RETIRED_SWEEP_S)
                self._retired_added.clear()
