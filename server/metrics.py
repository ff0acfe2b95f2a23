"""What the server has done and how fast: Prometheus metrics for scrapers, recent samples for the dashboard.

Each app has its own `CollectorRegistry`, so several apps in one process (the tests) never share counters.
Labels carry the Flask url rule (`/session/<session_id>`), never the raw path, and only names of served
models, so no id, file name or other client-chosen string becomes a label value. Request counts on the
dashboard are read from the same Prometheus counters that `/metrics` exports, so the two always agree.
Installed models that today's checks refused at start-up (`ModelRegistry.failed`) are reported by name
(`aiaa_model_refused`, /ready) and, to admins, with a short reason stripped of any absolute path.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from flask import Request, Response, current_app
from prometheus_client import CollectorRegistry, Counter, Histogram, Info, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from . import __version__
from .registry import ModelRegistry
from .sessions import SessionStore

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
RECENT_LATENCIES = 1000  # per endpoint: the window the dashboard's p50/p95/p99 are computed over
RECENT_ERRORS = 20
SERIES_MINUTES = 60  # the dashboard's charts cover the last hour, one point per minute
NO_MODEL = "-"  # the request named no model
UNKNOWN_MODEL = "unknown"  # it named one this server does not serve
UNMATCHED = "unmatched"  # no route matched (404 for an unknown path)
REFUSED_REASON_CHARS = 200
# An absolute path (POSIX, or Windows with a drive letter) at the start of a token: a relative path inside
# the model folder (`models/model.ts`) says what was refused, an absolute one says where the server lives.
ABSOLUTE_PATH = re.compile(r"(?<![\w.~])~?/[^\s'\"`]+|\b[A-Za-z]:\\[^\s'\"`]+")


@dataclass
class MinuteBucket:
    minute: int  # minutes since the epoch
    requests: int = 0
    errors: int = 0
    latency_sum_s: float = 0.0
    latency_max_s: float = 0.0


@dataclass(frozen=True)
class RequestLabels:
    endpoint: str
    method: str
    model: str
    status: str

    @property
    def is_error(self) -> bool:
        return int(self.status) >= 400


class ServerStateCollector(Collector):
    """Gauges read at scrape time from the live registry and session store (nothing to keep in sync)."""

    def __init__(self, models: ModelRegistry, sessions: SessionStore):
        self.models, self.sessions = models, sessions

    def collect(self) -> Iterator[Metric]:
        sessions = self.sessions.snapshot()
        yield GaugeMetricFamily("aiaa_sessions", "Live sessions.", value=len(sessions))
        yield GaugeMetricFamily(
            "aiaa_session_bytes", "Decoded image bytes held by all sessions.", value=sum(s.nbytes for s in sessions)
        )
        infos = [model.info() for model in self.models.list()]
        yield GaugeMetricFamily(
            "aiaa_models_loaded",
            "Models loaded and ready to serve.",
            value=sum(info.get("status") == "ready" for info in infos),
        )
        state = GaugeMetricFamily(
            "aiaa_model_ready", "1 when the model is ready, else 0.", labels=["model", "type", "engine", "status"]
        )
        for info in infos:
            status = str(info.get("status", "ready"))
            state.add_metric(
                [info["name"], str(info.get("type")), str(info.get("engine")), status], float(status == "ready")
            )
        yield state
        refused = GaugeMetricFamily(
            "aiaa_model_refused",
            "1 for each installed model that failed today's checks at start-up and is not served.",
            labels=["model"],
        )
        for item in refused_models(self.models):
            refused.add_metric([item["name"]], 1.0)
        yield refused


class Metrics:
    """The app's metrics; `observe_request` is called once per request by the app's after_request hook."""

    def __init__(self, models: ModelRegistry, sessions: SessionStore):
        self.models, self.sessions = models, sessions
        self.started = time.time()
        self.registry = CollectorRegistry()
        labels = ["endpoint", "method", "model", "status"]
        self.requests = Counter("aiaa_requests", "Requests answered.", labels, registry=self.registry)
        self.latency = Histogram(
            "aiaa_request_duration_seconds",
            "Time from request to reply, by route.",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inference = Histogram(
            "aiaa_inference_seconds",
            "Inference time by model and stage (the 'latencies' of the result).",
            ["model", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        Info("aiaa_build", "Server version.", registry=self.registry).info({"version": __version__})
        ProcessCollector(registry=self.registry)
        self.registry.register(ServerStateCollector(models, sessions))
        self._lock = threading.Lock()
        self._recent: dict[tuple[str, str], deque[float]] = {}
        self._errors: deque[dict] = deque(maxlen=RECENT_ERRORS)
        self._series: deque[MinuteBucket] = deque(maxlen=SERIES_MINUTES)

    # --- recording -------------------------------------------------------------------------------------

    def labels_for(self, request: Request, response: Response) -> RequestLabels:
        endpoint = request.url_rule.rule if request.url_rule is not None else UNMATCHED
        model = request.args.get("model")
        if not model:
            model = NO_MODEL
        elif model not in {m.name for m in self.models.list()}:
            model = UNKNOWN_MODEL
        return RequestLabels(endpoint, request.method, model, str(response.status_code))

    def observe_request(self, request: Request, response: Response, seconds: float) -> None:
        labels = self.labels_for(request, response)
        values = (labels.endpoint, labels.method, labels.model, labels.status)
        self.requests.labels(*values).inc()
        self.latency.labels(*values).observe(seconds)
        now = time.time()
        with self._lock:
            self._recent.setdefault((labels.endpoint, labels.method), deque(maxlen=RECENT_LATENCIES)).append(seconds)
            minute = int(now // 60)
            if not self._series or self._series[-1].minute != minute:
                self._series.append(MinuteBucket(minute))
            bucket = self._series[-1]
            bucket.requests += 1
            bucket.latency_sum_s += seconds
            bucket.latency_max_s = max(bucket.latency_max_s, seconds)
            if labels.is_error:
                bucket.errors += 1
                error = (response.get_json(silent=True) or {}).get("error", {}) if response.is_json else {}
                self._errors.appendleft(
                    {
                        "time": round(now, 3),
                        "method": labels.method,
                        "endpoint": labels.endpoint,
                        "model": labels.model,
                        "status": response.status_code,
                        "type": error.get("type", "") if isinstance(error, dict) else "",
                        "message": error.get("message", "") if isinstance(error, dict) else "",
                    }
                )

    def observe_inference(self, model: str, latencies: dict) -> None:
        """Record the per-stage seconds of one inference (`result["latencies"]`); non-numbers are ignored."""
        for stage, seconds in latencies.items():
            if isinstance(seconds, int | float) and not isinstance(seconds, bool):
                self.inference.labels(model, str(stage)).observe(float(seconds))

    # --- reading ---------------------------------------------------------------------------------------

    def exposition(self) -> bytes:
        """The Prometheus text format of everything in this app's registry."""
        return generate_latest(self.registry)

    def request_counts(self) -> list[tuple[RequestLabels, int]]:
        """(labels, count) for every series of the request counter, straight from Prometheus."""
        counts = []
        for metric in self.requests.collect():
            for sample in metric.samples:
                if sample.name == "aiaa_requests_total":
                    counts.append((RequestLabels(**sample.labels), int(sample.value)))
        return counts

    def inference_means_ms(self) -> dict[str, dict[str, float]]:
        """Mean inference milliseconds by model and stage since the start."""
        sums, counts = {}, {}
        for metric in self.inference.collect():
            for sample in metric.samples:
                key = (sample.labels["model"], sample.labels["stage"])
                if sample.name.endswith("_sum"):
                    sums[key] = sample.value
                elif sample.name.endswith("_count"):
                    counts[key] = sample.value
        means: dict[str, dict[str, float]] = {}
        for (model, stage), count in counts.items():
            if count:
                means.setdefault(model, {})[stage] = round(1000 * sums[(model, stage)] / count, 1)
        return means

    def summary(self) -> dict:
        """Requests by endpoint, model and status, latency percentiles, recent errors and the hour's series."""
        counts = self.request_counts()
        with self._lock:
            recent = {key: list(values) for key, values in self._recent.items()}
            errors = list(self._errors)
            series = list(self._series)
        by_endpoint: dict[tuple[str, str], dict] = {}
        by_model: dict[str, int] = {}
        by_status: dict[str, int] = {}
        for labels, count in counts:
            row = by_endpoint.setdefault(
                (labels.endpoint, labels.method),
                {"endpoint": labels.endpoint, "method": labels.method, "requests": 0, "errors": 0},
            )
            row["requests"] += count
            row["errors"] += count if labels.is_error else 0
            by_model[labels.model] = by_model.get(labels.model, 0) + count
            by_status[labels.status] = by_status.get(labels.status, 0) + count
        for key, row in by_endpoint.items():
            row.update(percentiles_ms(recent.get(key, [])))
        return {
            "total": sum(count for _, count in counts),
            "errors": sum(count for labels, count in counts if labels.is_error),
            "by_endpoint": sorted(by_endpoint.values(), key=lambda row: (-row["requests"], row["endpoint"])),
            "by_model": dict(sorted(by_model.items())),
            "by_status": dict(sorted(by_status.items())),
            "latency_ms": percentiles_ms([s for values in recent.values() for s in values]),
            "recent_errors": errors,
            "series": minute_series(series, int(time.time() // 60)),
        }


def percentiles_ms(seconds: list[float]) -> dict[str, float | None]:
    if not seconds:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None}
    p50, p95, p99 = np.percentile(np.asarray(seconds) * 1000, [50, 95, 99])
    return {"p50_ms": round(float(p50), 2), "p95_ms": round(float(p95), 2), "p99_ms": round(float(p99), 2)}


def minute_series(buckets: list[MinuteBucket], now_minute: int) -> dict[str, list]:
    """The last SERIES_MINUTES minutes up to `now_minute`, one entry each; minutes without requests are 0."""
    by_minute = {b.minute: b for b in buckets}
    minutes = list(range(now_minute - SERIES_MINUTES + 1, now_minute + 1))
    empty = MinuteBucket(0)
    rows = [by_minute.get(m, empty) for m in minutes]
    return {
        "time": [m * 60 for m in minutes],
        "requests": [b.requests for b in rows],
        "errors": [b.errors for b in rows],
        "latency_mean_ms": [round(1000 * b.latency_sum_s / b.requests, 2) if b.requests else None for b in rows],
        "latency_max_ms": [round(1000 * b.latency_max_s, 2) if b.requests else None for b in rows],
    }


def short_reason(reason: str) -> str:
    """A refusal's reason fit to show: one line, no absolute path, at most REFUSED_REASON_CHARS characters."""
    text = ABSOLUTE_PATH.sub("…", " ".join(str(reason).split()))
    return text if len(text) <= REFUSED_REASON_CHARS else text[: REFUSED_REASON_CHARS - 1] + "…"


def refused_models(models: ModelRegistry) -> list[dict[str, str]]:
    """Installed models refused at start-up, by name, each with its short reason (for admins' eyes).

    They stay refused until an admin installs a new version under the name (which clears the entry).
    """
    return [{"name": name, "reason": short_reason(reason)} for name, reason in sorted(dict(models.failed).items())]


def app_metrics() -> Metrics:
    return current_app.extensions["aiaa.metrics"]


def record_inference(model: str, latencies: dict) -> None:
    """For the inference views: record one result's `latencies` against the current app's metrics."""
    app_metrics().observe_inference(model, latencies)
