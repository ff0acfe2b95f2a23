"""Sessions in Redis, so any API replica (and any Ray Serve replica) serves any session.

A session is two keys: `aiaa:s:<id>:meta` (a hash: name, geometry, expiry, timestamps) and
`aiaa:s:<id>:blocks` (a hash of the volume's 64³ blocks, `server.session_stores.volume_blocks`). Both
carry the session's expiry as their Redis TTL, refreshed on every use (sliding, as in memory), so Redis
itself forgets expired sessions; the meta hash is written last, so a session is visible only complete.

Each process keeps the sessions it served lately as decoded `Session`s (least recently used dropped past
`max_bytes`), with their caches (the MetaTensor, the models' prepared data): a later click only refreshes
the TTL. A process that has not seen a session fetches it once. Redis lost (down, or restarted empty)
→ 440, which AIAA clients answer by uploading the image again; an upload while Redis is down → 503.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path

import redis
import SimpleITK as sitk
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from ..errors import ServiceUnavailable, SessionExpired
from ..sessions import Session, StoreBase, is_uuid
from .volume_blocks import block_keys, image_blocks, image_from_blocks, image_header

logger = logging.getLogger(__name__)

KEY_PREFIX = "aiaa:s:"
BLOCKS_PER_CALL = 64  # HSET/HMGET batches: a few MB each, so one call never holds Redis for long
REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError)


def meta_key(session_id: str) -> str:
    return f"{KEY_PREFIX}{session_id}:meta"


def blocks_key(session_id: str) -> str:
    return f"{KEY_PREFIX}{session_id}:blocks"


def connect(url: str) -> redis.Redis:
    """A client that retries a dropped connection twice (a restarted Redis), then raises."""
    return redis.Redis.from_url(
        url,
        socket_timeout=10,
        socket_connect_timeout=3,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        health_check_interval=30,
    )


def _gone(session_id: str) -> SessionExpired:
    return SessionExpired(f"Session '{session_id}' is unknown or has expired; upload the image again (PUT /session/).")


def _lost(session_id: str) -> SessionExpired:
    return SessionExpired(
        f"Session '{session_id}' is not available: the session store cannot be reached; upload the image again "
        "(PUT /session/)."
    )


class RedisSessionStore(StoreBase):
    """The session store interface (`server.session_stores.SessionStoreApi`) on Redis."""

    kind = "redis"

    def __init__(self, url: str, root: Path, default_expiry_s: float, max_expiry_s: float, max_bytes: int):
        super().__init__(root, default_expiry_s, max_expiry_s, max_bytes)
        self.url = url
        self.redis = connect(url)
        self._local: OrderedDict[str, Session] = OrderedDict()  # least recently used first
        self._fetching: dict[str, threading.Lock] = {}
        shutil.rmtree(self.root / "incoming", ignore_errors=True)

    # ------------------------------------------------------------------------------------------ limits

    def stored_bytes(self) -> int:
        """Memory Redis uses now (every session of every replica)."""
        return int(self.redis.info("memory")["used_memory"])

    def used_bytes(self) -> int:
        with self._lock:
            return sum(s.nbytes for s in self._local.values())

    def has_room(self, nbytes: int) -> bool:
        """Room in this process' local copies: a cache entry that does not fit is used once, not kept."""
        return nbytes <= self.max_bytes

    def require_room(self, nbytes: int) -> None:
        """503 unless `nbytes` more fit in Redis under the cap (`max_bytes` counts every replica's sessions)."""
        try:
            used = self.stored_bytes()
        except REDIS_ERRORS:
            raise self._unreachable() from None
        if used + nbytes > self.max_bytes:
            raise ServiceUnavailable(
                f"Session storage is full ({used / 2**20:.0f} of {self.max_bytes / 2**20:.0f} MB in use); "
                "try again later or send the image with the request instead."
            )

    @staticmethod
    def _unreachable() -> ServiceUnavailable:
        return ServiceUnavailable("The session store (Redis) cannot be reached; try again later.")

    # ----------------------------------------------------------------------------------------- sessions

    def create(self, image: sitk.Image, folder: Path, name: str, expiry_s: float | None) -> Session:
        """Store the decoded image in Redis (blocks first, the meta hash last); the upload's files are dropped."""
        session_id = str(uuid.uuid4())
        expiry = self.expiry_for(expiry_s)
        now = time.time()
        session = Session(session_id, image, self.root / session_id, name, expiry, created=now, last_access=now)
        session.has_room = self.has_room
        self.require_room(session.nbytes)
        ttl = max(1, math.ceil(expiry))
        meta = {"name": name, "expiry_s": expiry, "created": now, "last_access": now, **image_header(image)}
        try:
            pipe = self.redis.pipeline(transaction=False)
            batch: dict[str, bytes] = {}
            for key, raw in image_blocks(image):
                batch[key] = raw
                if len(batch) == BLOCKS_PER_CALL:
                    pipe.hset(blocks_key(session_id), mapping=batch)
                    pipe.execute()
                    batch = {}
            if batch:
                pipe.hset(blocks_key(session_id), mapping=batch)
            pipe.expire(blocks_key(session_id), ttl)
            pipe.hset(meta_key(session_id), mapping={k: json.dumps(v) for k, v in meta.items()})
            pipe.expire(meta_key(session_id), ttl)
            pipe.execute()
        except REDIS_ERRORS:
            raise self._unreachable() from None
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self._keep(session)
        logger.info("session %s stored in Redis (%.1f MB, expiry %.0f s)", session_id, session.nbytes / 2**20, expiry)
        return session

    def get(self, session_id: str, *, touch: bool = True) -> Session:
        """The session (this process' copy, else fetched from Redis), its TTL refreshed; gone → 440."""
        if not is_uuid(session_id):
            raise _gone(session_id)
        with self._lock:
            local = self._local.get(session_id)
            if local is not None:
                self._local.move_to_end(session_id)
        try:
            if local is not None:
                if not self._refresh(local, touch):
                    self._drop(session_id)
                    raise _gone(session_id)
                return local
            return self._fetch(session_id, touch)
        except REDIS_ERRORS:
            self._drop(session_id)
            raise _lost(session_id) from None

    def _refresh(self, session: Session, touch: bool) -> bool:
        """Whether the session still lives in Redis; with `touch`, its expiry restarts now (both keys)."""
        if not touch:
            return bool(self.redis.exists(meta_key(session.id)))
        now = time.time()
        ttl = max(1, math.ceil(session.expiry_s))
        pipe = self.redis.pipeline(transaction=False)
        pipe.expire(meta_key(session.id), ttl)
        pipe.expire(blocks_key(session.id), ttl)
        alive, _ = pipe.execute()
        if alive:
            self.redis.hset(meta_key(session.id), "last_access", json.dumps(now))
            session.last_access = now
        return bool(alive)

    def _fetch(self, session_id: str, touch: bool) -> Session:
        """Read a session this process has not seen (one fetch at a time per session)."""
        with self._lock:
            fetching = self._fetching.setdefault(session_id, threading.Lock())
        with fetching:
            with self._lock:
                if session_id in self._local:
                    session = self._local[session_id]
                    self._fetching.pop(session_id, None)
                    return session if self._refresh(session, touch) else self._missing(session_id)
            raw = self.redis.hgetall(meta_key(session_id))
            if not raw:
                raise _gone(session_id)
            meta = {k.decode(): json.loads(v) for k, v in raw.items()}
            image = self._read_image(session_id, meta)
            session = Session(
                session_id,
                image,
                self.root / session_id,
                meta["name"],
                float(meta["expiry_s"]),
                created=float(meta["created"]),
                last_access=float(meta["last_access"]),
                has_room=self.has_room,
            )
            if not self._refresh(session, touch):
                raise _gone(session_id)
            self._keep(session)
            with self._lock:
                self._fetching.pop(session_id, None)
            logger.info("session %s fetched from Redis (%.1f MB)", session_id, session.nbytes / 2**20)
            return session

    def _missing(self, session_id: str) -> Session:
        self._drop(session_id)
        raise _gone(session_id)

    def _read_image(self, session_id: str, meta: dict) -> sitk.Image:
        keys = block_keys(meta)
        blocks: dict[str, bytes | None] = {}
        for start in range(0, len(keys), BLOCKS_PER_CALL):
            chunk = keys[start : start + BLOCKS_PER_CALL]
            blocks.update(zip(chunk, self.redis.hmget(blocks_key(session_id), chunk), strict=True))
        try:
            return image_from_blocks(meta, blocks)
        except KeyError:  # the blocks expired between the two reads
            raise _gone(session_id) from None

    def _keep(self, session: Session) -> None:
        """Keep a local copy, dropping the least recently used ones past `max_bytes`."""
        with self._lock:
            self._local[session.id] = session
            self._local.move_to_end(session.id)
            while len(self._local) > 1 and sum(s.nbytes for s in self._local.values()) > self.max_bytes:
                evicted, _ = self._local.popitem(last=False)
                logger.info("session %s: local copy dropped (still in Redis)", evicted)

    def _drop(self, session_id: str) -> None:
        with self._lock:
            self._local.pop(session_id, None)
            self._fetching.pop(session_id, None)

    def delete(self, session_id: str) -> bool:
        self._drop(session_id)
        if not is_uuid(session_id):
            return False
        try:
            return bool(self.redis.delete(meta_key(session_id), blocks_key(session_id)))
        except REDIS_ERRORS:
            raise self._unreachable() from None

    def snapshot(self) -> list[Session]:
        """This process' copies of sessions (the dashboard of one replica; Redis holds them all)."""
        with self._lock:
            return list(self._local.values())

    def count(self) -> int:
        """Sessions in Redis (every replica's), for /ready and the dashboard."""
        return sum(1 for _ in self.redis.scan_iter(match=f"{KEY_PREFIX}*:meta", count=1000))

    def describe(self) -> dict:
        """The store as /ready and the dashboard show it (no password: only host, port and database)."""
        kwargs = self.redis.connection_pool.connection_kwargs
        where = f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"
        try:
            return {
                "kind": self.kind,
                "url": where,
                "reachable": True,
                "sessions": self.count(),
                "bytes": self.stored_bytes(),
                "local_copies": len(self.snapshot()),
            }
        except REDIS_ERRORS:
            return {"kind": self.kind, "url": where, "reachable": False, "local_copies": len(self.snapshot())}

    def reap(self) -> list[str]:
        """Drop local copies whose session Redis no longer has (expired there, deleted, or Redis restarted)."""
        with self._lock:
            ids = list(self._local)
        if not ids:
            return []
        try:
            pipe = self.redis.pipeline(transaction=False)
            for session_id in ids:
                pipe.exists(meta_key(session_id))
            alive = pipe.execute()
        except REDIS_ERRORS:
            alive = [False] * len(ids)
        gone = [session_id for session_id, live in zip(ids, alive, strict=True) if not live]
        for session_id in gone:
            self._drop(session_id)
            logger.info("session %s: local copy dropped (gone from Redis)", session_id)
        return gone

    def stop(self) -> None:
        super().stop()
        self.redis.close()

    def __len__(self) -> int:
        return len(self._local)
