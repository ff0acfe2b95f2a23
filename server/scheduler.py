"""Inference scheduling: clicks never wait behind a full-volume segmentation, and overload is a clear 503.

Two lanes, each a bounded pool of workers with a bounded queue: *interactive* (deepgrow and annotation
models: a click, a set of extreme points) and *batch* (segmentation and anything else). A request that
finds its lane's queue full gets 503 with `Retry-After` (an estimate from the lane's recent service
times) instead of waiting without end.

Both lanes share the same cores, so priority is cooperative: batch work checks in between steps (every
sliding-window patch and between pre-processing, inference and encoding, through the `Pacing` its slot
hands out, which the request carries to the engines) and pauses there while any interactive request is
queued or running. A pause is capped (`max_pause_s`) so a stream of clicks cannot starve a segmentation
for ever. The same `Pacing` shares the inference threads among the forwards running at once
(`aiaa_core.engines.ThreadShare`, one per scheduler).

Everything that allocates images runs in a lane (inference with its upload's decoding, a session's
decoding as `Work.DECODE`), so at most `interactive_workers + batch_workers` requests hold memory at once,
each within its share of the memory budget (`server.budget`).
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

from aiaa_core.engines import Pacing, ThreadShare
from aiaa_core.vocabularies import ModelType

from .errors import ServiceUnavailable


class Work(StrEnum):
    """Work other than a model's inference that allocates images, and so also runs in a lane."""

    DECODE = "decode"  # decoding an upload into a session: a clinician waits for it before the first click


INTERACTIVE_TYPES = frozenset({ModelType.DEEPGROW, ModelType.ANNOTATION, Work.DECODE})
"""Model types (and `Work`) run in the interactive lane; every other type in the batch lane."""


class Lane:
    """`workers` requests run at once, at most `max_waiting` more wait; the rest get 503."""

    def __init__(self, name: str, workers: int, max_waiting: int):
        if workers < 1 or max_waiting < 0:
            raise ValueError(f"lane '{name}' needs at least one worker and a non-negative queue")
        self.name, self.workers, self.max_waiting = name, workers, max_waiting
        self.waiting = self.running = 0
        self.mean_service_s = 1.0  # moving average of recent service times, for Retry-After
        self._slots = threading.Semaphore(workers)
        self._lock = threading.Lock()

    @property
    def active(self) -> int:
        return self.waiting + self.running

    def retry_after_s(self) -> int:
        """Seconds until the queue has probably drained enough to take one more request."""
        return max(1, math.ceil(self.active * self.mean_service_s / self.workers))

    @contextlib.contextmanager
    def slot(self, on_change=None) -> Iterator[float]:
        """Hold a worker slot for the block; yields the seconds spent queueing."""
        with self._lock:
            if self.waiting >= self.max_waiting and self.running >= self.workers:
                raise ServiceUnavailable(
                    f"The server is busy ({self.running} {self.name} requests running, {self.waiting} waiting); "
                    f"try again in {self.retry_after_s()} s.",
                    headers={"Retry-After": str(self.retry_after_s())},
                )
            self.waiting += 1
        queued = time.perf_counter()
        if on_change:
            on_change()
        self._slots.acquire()
        started = time.perf_counter()
        with self._lock:
            self.waiting -= 1
            self.running += 1
        try:
            yield started - queued
        finally:
            with self._lock:
                self.running -= 1
                self.mean_service_s = 0.8 * self.mean_service_s + 0.2 * (time.perf_counter() - started)
            self._slots.release()
            if on_change:
                on_change()


@dataclass(frozen=True)
class Slot:
    """A held worker slot: its lane, the seconds spent queueing, and how the request's forwards run."""

    lane: Lane
    queued_s: float
    pacing: Pacing

    @property
    def batch(self) -> bool:
        """Whether it runs in the batch lane (and so gets a batch worker's share of the memory budget)."""
        return self.lane.name == "batch"


class Scheduler:
    """Runs each inference in its lane; batch work yields to interactive work between steps."""

    def __init__(
        self,
        interactive_workers: int = 2,
        interactive_queue: int = 16,
        batch_workers: int = 1,
        batch_queue: int = 4,
        max_pause_s: float = 5.0,
        threads: int = 0,
    ):
        self.interactive = Lane("interactive", interactive_workers, interactive_queue)
        self.batch = Lane("batch", batch_workers, batch_queue)
        self.max_pause_s = max_pause_s
        self._interactive_changed = threading.Condition()
        self.pauses = 0  # batch check-ins that had to wait for interactive work (observable in tests)
        self.threads = ThreadShare(threads)  # threads per inference (0: the cores), shared by those running
        self.interactive_pacing = Pacing(share=self.threads)
        # Batch work's pacing; also for work that holds no slot but lets clicks pass (an install's test inference).
        self.batch_pacing = Pacing(self.checkpoint, self.threads)

    def lane_for(self, model_type: str) -> Lane:
        return self.interactive if model_type in INTERACTIVE_TYPES else self.batch

    @contextlib.contextmanager
    def run(self, model_type: str) -> Iterator[Slot]:
        """Hold a slot in the model type's lane for the block.

        A batch slot's `pacing` checks in (`checkpoint`) before every engine forward of its request."""
        lane = self.lane_for(model_type)
        if lane is self.interactive:
            with lane.slot(on_change=self._notify) as queued:
                yield Slot(lane, queued, self.interactive_pacing)
            return
        with lane.slot() as queued:
            yield Slot(lane, queued, self.batch_pacing)

    def checkpoint(self) -> None:
        """Pause batch work while interactive requests are queued or running (at most `max_pause_s`)."""
        if not self.interactive.active:
            return
        deadline = time.monotonic() + self.max_pause_s
        with self._interactive_changed:
            self.pauses += 1
            while self.interactive.active and (left := deadline - time.monotonic()) > 0:
                self._interactive_changed.wait(left)

    def _notify(self) -> None:
        with self._interactive_changed:
            self._interactive_changed.notify_all()
