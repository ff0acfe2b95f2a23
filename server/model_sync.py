"""Keeping API replicas that share one model repository (a shared volume) serving the same models.

An install, replacement or deletion through one replica's admin API is published on the Redis channel
`aiaa:models`; every replica subscribes and re-reads the store's committed versions
(`ModelRegistry.refresh`, read-only: a version without its commit marker is never served). The message
only wakes the replicas up: what they serve comes from the folder, never from the message. A bounded poll
(`--model-poll-s`) catches a lost message, a Redis outage or a replica without Redis. Started by
`start_background` (`aiaa serve`), never by `create_app`; without `--redis` or `--model-poll-s` nothing runs.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .registry import ModelRegistry
    from .settings import Settings

logger = logging.getLogger(__name__)

CHANNEL = "aiaa:models"
DEFAULT_POLL_S = 5.0  # with --redis and no --model-poll-s: a lost message is caught within this
RECONNECT_S = 2.0  # after Redis dropped the subscription, before subscribing again (polling meanwhile)


def poll_interval(settings: Settings) -> float:
    """Seconds between polls of the shared folder; 0: this replica does not follow others (the embedded default)."""
    if settings.model_poll_s is not None:
        return max(0.0, float(settings.model_poll_s))
    return DEFAULT_POLL_S if settings.redis_url else 0.0


class ModelSync:
    """One replica's follower: publishes its own changes, refreshes its registry on others' (or on a poll)."""

    def __init__(self, registry: ModelRegistry, redis_url: str, poll_s: float, warm_up: bool = True):
        self.registry, self.redis_url, self.poll_s, self.warm_up = registry, redis_url, poll_s, warm_up
        self.replica = uuid.uuid4().hex  # its own messages wake nobody up here
        self.last_sync: float | None = None  # time.time() of the last refresh that completed
        self.syncs = 0
        self.subscribed = True  # False while Redis is unreachable (polling meanwhile)
        self._stop = threading.Event()
        self.thread: threading.Thread | None = None
        self._client = None
        if redis_url:
            from .session_stores.redis_store import connect  # the `cluster` extra

            self._client = connect(redis_url)
        registry.listeners.append(self.publish)

    def start(self) -> threading.Thread:
        self.thread = threading.Thread(target=self._run, name="aiaa-model-sync", daemon=True)
        self.thread.start()
        return self.thread

    def stop(self) -> None:
        self._stop.set()

    def publish(self, name: str, change: str) -> None:
        """Tell the other replicas (a registry listener, called after the change is committed)."""
        if self._client is not None:
            message = {"name": name, "change": change, "replica": self.replica}
            self._client.publish(CHANNEL, json.dumps(message))

    def sync(self) -> dict[str, list[str]]:
        changes = self.registry.refresh(warm_up=self.warm_up)
        self.last_sync, self.syncs = time.time(), self.syncs + 1
        return changes

    def describe(self) -> dict:
        last = self.last_sync
        return {
            "via": "redis" if self._client is not None and self.subscribed else "polling",
            "poll_s": self.poll_s,
            "last_sync": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(last)) if last is not None else None,
        }

    # ------------------------------------------------------------------------------------------- the thread

    def _run(self) -> None:
        if self._client is None:
            self._poll_until(self._stop)
            return
        while not self._stop.is_set():
            try:
                self._listen()
            except Exception as error:  # Redis gone or restarted: poll, then subscribe again
                if self.subscribed:  # once per outage, not at every retry
                    logger.warning("model sync: Redis subscription lost (%s); polling until it is back", error)
                self.subscribed = False
                self._safe_sync()
                self._stop.wait(RECONNECT_S)

    def _listen(self) -> None:
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(CHANNEL)
            self.subscribed = True
            self._safe_sync()  # after subscribing: a change made before is found on the disk, none after is missed
            next_poll = time.monotonic() + self.poll_s if self.poll_s else None
            while not self._stop.is_set():
                timeout = max(0.0, next_poll - time.monotonic()) if next_poll is not None else 1.0
                message = pubsub.get_message(timeout=min(timeout, 1.0))  # wakes at least every second for stop()
                if message is not None and self._from_another(message):
                    while pubsub.get_message(timeout=0) is not None:
                        pass  # several changes at once: one refresh reads them all
                    self._safe_sync()
                elif next_poll is not None and time.monotonic() >= next_poll:
                    self._safe_sync()
                else:
                    continue
                if next_poll is not None:
                    next_poll = time.monotonic() + self.poll_s
        finally:
            pubsub.close()

    def _from_another(self, message: dict) -> bool:
        """Any well-formed message but this replica's own; its content is not trusted beyond that."""
        try:
            return json.loads(message["data"]).get("replica") != self.replica
        except (ValueError, TypeError, AttributeError):
            return True  # unreadable: a refresh costs a folder listing, and reads only the disk

    def _poll_until(self, stop: threading.Event) -> None:
        while not stop.wait(self.poll_s):
            self._safe_sync()

    def _safe_sync(self) -> None:
        try:
            self.sync()
        except Exception:  # a bad folder on the shared volume must not end the thread
            logger.exception("model sync: refreshing the model repository failed")


def start_model_sync(registry: ModelRegistry, settings: Settings, warm_up: bool) -> ModelSync | None:
    """The follower for this replica, started; None when it follows no one (no Redis, no polling)."""
    poll_s = poll_interval(settings)
    if not settings.redis_url and not poll_s:
        return None
    sync = ModelSync(registry, settings.redis_url, poll_s, warm_up)
    sync.start()
    return sync
