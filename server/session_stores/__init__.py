"""Where sessions live: in this process (the default, `server.sessions.SessionStore`) or in Redis
(`server.session_stores.redis_store.RedisSessionStore`, the cluster mode: any API replica serves any session).

Both keep the interface below; the blueprints, inference and metrics use only it. `open_session_store`
picks one from the settings (`--redis URL` / AIAA_REDIS_URL).
"""

from __future__ import annotations

import threading
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import SimpleITK as sitk

from ..sessions import Session, SessionStore

if TYPE_CHECKING:
    from ..settings import Settings


class StoreKind(StrEnum):
    MEMORY = "memory"
    REDIS = "redis"


class SessionStoreApi(Protocol):
    """What every session store offers (`server.sessions.SessionStore` documents the semantics)."""

    kind: str
    root: Path  # this process' scratch folder for uploads being decoded
    max_bytes: int

    def expiry_for(self, requested: float | None) -> float: ...
    def has_room(self, nbytes: int) -> bool: ...
    def require_room(self, nbytes: int) -> None: ...
    def create(self, image: sitk.Image, folder: Path, name: str, expiry_s: float | None) -> Session: ...
    def get(self, session_id: str, *, touch: bool = True) -> Session: ...
    def delete(self, session_id: str) -> bool: ...
    def snapshot(self) -> list[Session]: ...
    def describe(self) -> dict: ...
    def reap(self) -> list[str]: ...
    def start_reaper(self, interval_s: float) -> threading.Thread: ...
    def stop(self) -> None: ...
    def __len__(self) -> int: ...


def open_session_store(settings: Settings) -> SessionStoreApi:
    """Redis when the settings name a URL, else in memory."""
    limits = (settings.session_expiry_s, settings.session_max_expiry_s, settings.session_max_bytes)
    if settings.redis_url:
        from .redis_store import RedisSessionStore  # the `cluster` extra

        return RedisSessionStore(settings.redis_url, settings.session_dir, *limits)
    return SessionStore(settings.session_dir, *limits)
