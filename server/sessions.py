"""Sessions: an uploaded volume decoded once and kept ready, so each click skips upload and decoding.

A session also caches what is derived from its image alone (`Session.cached`): the channel-first
MetaTensor the tasks take, and each model's point-independent pre-processing, so a click only crops,
infers and pastes back.

Expiry is min(requested, configured max), counted from the last use (sliding). A reaper thread deletes
expired sessions and their files; a cap on the total decoded bytes refuses new sessions when full (before
decoding, from the header) and keeps cache entries out of a full store.
"""

from __future__ import annotations

import logging
import math
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import SimpleITK as sitk

from .errors import ServiceUnavailable, SessionExpired

logger = logging.getLogger(__name__)


def is_uuid(name: str) -> bool:
    try:
        return str(uuid.UUID(name)) == name
    except ValueError:
        return False


@dataclass
class Session:
    id: str
    image: sitk.Image
    folder: Path
    name: str
    expiry_s: float
    created: float = field(default_factory=time.time)
    last_access: float = field(default_factory=time.time)
    cache: dict[Hashable, Any] = field(default_factory=dict, repr=False)
    cache_bytes: int = 0
    _counted: set[int] = field(default_factory=set, repr=False)  # storages already in cache_bytes
    _building: dict[Hashable, threading.Lock] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    has_room: Callable[[int], bool] | None = field(default=None, repr=False)  # the store's cap, for the cache

    @property
    def nbytes(self) -> int:
        """Memory held: the decoded image and what is cached from it."""
        return (
            self.image.GetNumberOfPixels()
            * self.image.GetSizeOfPixelComponent()
            * self.image.GetNumberOfComponentsPerPixel()
            + self.cache_bytes
        )

    def cached(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """The value cached under `key`, built once (concurrent callers of one key wait for the first)."""
        with self._lock:
            if key in self.cache:
                return self.cache[key]
            building = self._building.setdefault(key, threading.Lock())
        with building:
            with self._lock:
                if key in self.cache:
                    return self.cache[key]
            value = build()
            with self._lock:
                self._building.pop(key, None)
                extra = _nbytes(value, set(self._counted))
                if self.has_room is not None and not self.has_room(extra):
                    logger.info("session %s: cache entry of %.1f MB not kept (store full)", self.id, extra / 2**20)
                    return value  # used for this request only: the store's cap holds for caches too
                self.cache[key] = value
                self.cache_bytes += _nbytes(value, self._counted)
            return value

    def expired(self, now: float) -> bool:
        return now - self.last_access > self.expiry_s

    def info(self) -> dict:
        return {
            "name": self.name,
            "size": list(self.image.GetSize()),
            "spacing": list(self.image.GetSpacing()),
            "origin": list(self.image.GetOrigin()),
            "direction": list(self.image.GetDirection()),
            "bytes": self.nbytes,
            "expiry": self.expiry_s,
            "create_ts": round(self.created, 3),
            "last_access_ts": round(self.last_access, 3),
        }


def _nbytes(value: Any, counted: set[int]) -> int:
    """Bytes of the tensors in a cached value (a tensor, or a dict of them) not already `counted`
    (the models' prepared data often shares the session's MetaTensor)."""
    if isinstance(value, dict):
        return sum(_nbytes(v, counted) for v in value.values())
    if not hasattr(value, "untyped_storage"):  # torch tensors (MONAI MetaTensors too)
        return 0
    storage = value.untyped_storage()
    if storage.data_ptr() in counted:
        return 0
    counted.add(storage.data_ptr())
    return storage.nbytes()


class StoreBase:
    """What every session store shares: its limits, the expiry rule and the reaper thread (`reap` is theirs)."""

    def __init__(self, root: Path, default_expiry_s: float, max_expiry_s: float, max_bytes: int):
        self.root = Path(root)  # this process' session files and uploads being decoded
        self.default_expiry_s, self.max_expiry_s, self.max_bytes = default_expiry_s, max_expiry_s, max_bytes
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.root.mkdir(parents=True, exist_ok=True)

    def expiry_for(self, requested: float | None) -> float:
        """min(requested, max); 0, absent or not a finite positive number → the default."""
        if requested is None or not math.isfinite(requested) or requested <= 0:
            return min(self.default_expiry_s, self.max_expiry_s)
        return min(float(requested), self.max_expiry_s)

    def reap(self) -> list[str]:
        raise NotImplementedError

    def start_reaper(self, interval_s: float) -> threading.Thread:
        """Sweep expired sessions every `interval_s` until `stop` (started by `aiaa serve`, not the factory)."""

        def run() -> None:
            while not self._stop.wait(interval_s):
                self.reap()

        thread = threading.Thread(target=run, name="session-reaper", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()


class SessionStore(StoreBase):
    """Sessions in this process' memory (the default); `server.session_stores` has the interface and Redis."""

    kind = "memory"

    def __init__(self, root: Path, default_expiry_s: float, max_expiry_s: float, max_bytes: int):
        super().__init__(root, default_expiry_s, max_expiry_s, max_bytes)
        self._sessions: dict[str, Session] = {}
        for leftover in self.root.iterdir():  # sessions do not survive a restart; remove only our own folders
            if leftover.is_dir() and (leftover.name == "incoming" or is_uuid(leftover.name)):
                shutil.rmtree(leftover, ignore_errors=True)

    def used_bytes(self) -> int:
        with self._lock:
            return sum(s.nbytes for s in self._sessions.values())

    def has_room(self, nbytes: int) -> bool:
        return self.used_bytes() + nbytes <= self.max_bytes

    def require_room(self, nbytes: int) -> None:
        """503 unless `nbytes` more fit under the cap (checked again, atomically, when the session is stored)."""
        used = self.used_bytes()
        if used + nbytes > self.max_bytes:
            raise self._full(used)

    def _full(self, used: int) -> ServiceUnavailable:
        return ServiceUnavailable(
            f"Session storage is full ({used / 2**20:.0f} of {self.max_bytes / 2**20:.0f} MB in use); "
            "try again later or send the image with the request instead."
        )

    def create(self, image: sitk.Image, folder: Path, name: str, expiry_s: float | None) -> Session:
        """Register a decoded image whose files were saved in `folder` (moved under the store's root)."""
        session_id = str(uuid.uuid4())
        target = self.root / session_id
        shutil.move(str(folder), target)
        session = Session(session_id, image, target, name, self.expiry_for(expiry_s), has_room=self.has_room)
        with self._lock:
            used = sum(s.nbytes for s in self._sessions.values())
            if used + session.nbytes > self.max_bytes:
                shutil.rmtree(target, ignore_errors=True)
                raise self._full(used)
            self._sessions[session_id] = session
        logger.info(  # without the file name: it can carry a patient's name
            "session %s created (%.1f MB, expiry %.0f s)",
            session_id,
            session.nbytes / 2**20,
            session.expiry_s,
        )
        return session

    def get(self, session_id: str, *, touch: bool = True) -> Session:
        """The live session, its last access refreshed; unknown or expired → SessionExpired (440)."""
        now = time.time()
        with self._lock:
            session = self._sessions.get(session_id)
            if session is None or session.expired(now):
                raise SessionExpired(
                    f"Session '{session_id}' is unknown or has expired; upload the image again (PUT /session/)."
                )
            if touch:
                session.last_access = now
            return session

    def delete(self, session_id: str) -> bool:
        with self._lock:
            session = self._sessions.pop(session_id, None)
        if session:
            shutil.rmtree(session.folder, ignore_errors=True)
        return session is not None

    def snapshot(self) -> list[Session]:
        """The stored sessions (expired ones included until the reaper removes them), for the dashboard."""
        with self._lock:
            return list(self._sessions.values())

    def describe(self) -> dict:
        """The store as /ready and the dashboard show it."""
        return {"kind": self.kind, "sessions": len(self), "bytes": self.used_bytes(), "max_bytes": self.max_bytes}

    def reap(self) -> list[str]:
        """Delete every expired session and its files; return their ids."""
        now = time.time()
        with self._lock:
            expired = [s for s in self._sessions.values() if s.expired(now)]
            for s in expired:
                del self._sessions[s.id]
        for s in expired:
            shutil.rmtree(s.folder, ignore_errors=True)
            logger.info("session %s expired and removed", s.id)
        return [s.id for s in expired]

    def __len__(self) -> int:
        return len(self._sessions)
