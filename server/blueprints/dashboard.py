"""`/v1/dashboard`: one page for whoever runs the service (health, traffic, latency, sessions, errors).

The page renders from the same JSON that `?format=json` returns (embedded at load, then polled), so
the two never disagree. Admin credentials are required, as for the admin API.
"""

from __future__ import annotations

import os
import time

import psutil
import torch
from flask import Blueprint, current_app, jsonify, render_template, request, url_for

from .. import __version__
from ..auth import admin_required
from ..errors import BadRequest
from ..metrics import app_metrics, refused_models
from ..openapi import Param, document
from . import registry, session_store
from .ops import cluster_state

bp = Blueprint("dashboard", __name__)
REFRESH_S = 5
_PROCESS = psutil.Process()
_PROCESS.cpu_percent(None)  # the first reading starts the interval that later readings measure


@bp.get("/v1/dashboard")
@admin_required
@document(
    query=[Param("format", "'json' for the page's data.", {"type": "string", "enum": ["json"]})],
    reply={
        "description": "The dashboard page, or its data with format=json.",
        "content": {"text/html": {"schema": {"type": "string"}}, "application/json": {"schema": {"type": "object"}}},
    },
    errors=(400,),
)
def dashboard():
    """The operations dashboard: uptime, models (and those refused at start-up), requests, latency, errors,
    sessions, process resources."""
    output = request.args.get("format", "html")
    if output not in ("html", "json"):
        raise BadRequest(f"Unknown format '{output}': leave it out for the page, or use format=json.")
    data = dashboard_data()
    if output == "json":
        return jsonify(data)
    return render_template(
        "dashboard.html", data=data, json_url=url_for("dashboard.dashboard", format="json"), refresh_s=REFRESH_S
    )


def dashboard_data() -> dict:
    metrics = app_metrics()
    summary = metrics.summary()
    inference_ms = metrics.inference_means_ms()
    models = []
    for model in registry().list():
        info = model.info()
        models.append(
            {
                "name": info["name"],
                "type": info.get("type"),
                "engine": info.get("engine"),
                "status": info.get("status", "ready"),
                "error": info.get("error"),
                "source": info.get("source"),
                "version": info.get("version"),
                "requests": summary["by_model"].get(info["name"], 0),
                "inference_ms": inference_ms.get(info["name"], {}),
            }
        )
    now = time.time()
    return {
        "server": {
            "version": __version__,
            "started": round(metrics.started, 3),
            "uptime_s": round(now - metrics.started),
        },
        "models": models,
        "refused": refused_models(registry()),  # installed, but refused at start-up by today's checks
        "training": current_app.extensions["aiaa.training"].summary(),  # server/monailabel_api/training.py
        "requests": {key: summary[key] for key in ("total", "errors", "by_endpoint", "by_model", "by_status")},
        "latency_ms": summary["latency_ms"],
        "recent_errors": summary["recent_errors"],
        "sessions": session_stats(now),
        "cluster": cluster_state(),  # the session store and the inference backend (Ray Serve replicas)
        "process": process_stats(),
        "series": summary["series"],
    }


def session_stats(now: float) -> dict:
    """Live sessions without their file names (those can carry patient names)."""
    store = session_store()
    live = sorted(store.snapshot(), key=lambda s: s.created)
    return {
        "count": len(live),
        "bytes": sum(s.nbytes for s in live),
        "max_bytes": store.max_bytes,
        "items": [
            {
                "id": s.id,
                "size": list(s.image.GetSize()),
                "bytes": s.nbytes,
                "age_s": round(now - s.created),
                "idle_s": round(now - s.last_access),
                "expiry_s": s.expiry_s,
            }
            for s in live
        ],
    }


def process_stats() -> dict:
    with _PROCESS.oneshot():
        memory = _PROCESS.memory_info()
        stats = {
            "pid": _PROCESS.pid,
            "rss_bytes": memory.rss,
            "cpu_percent": _PROCESS.cpu_percent(None),
            "threads": _PROCESS.num_threads(),
        }
    system = psutil.virtual_memory()
    stats.update(cpu_count=os.cpu_count(), system_memory_bytes=system.total, system_available_bytes=system.available)
    stats["gpus"] = gpu_stats()
    return stats


def gpu_stats() -> list[dict]:
    """Memory of each CUDA device as torch sees it; [] on a CPU-only machine."""
    if not torch.cuda.is_available():
        return []
    return [
        {
            "index": i,
            "name": torch.cuda.get_device_name(i),
            "memory_allocated_bytes": torch.cuda.memory_allocated(i),
            "memory_reserved_bytes": torch.cuda.memory_reserved(i),
            "memory_total_bytes": torch.cuda.get_device_properties(i).total_memory,
        }
        for i in range(torch.cuda.device_count())
    ]
