"""The models the server serves, each one task with MONAI Label's `BasicInferTask` interface.

Today the registry serves the models of the MONAI Label app (`apps/spleen`), loaded through the
app's own `lib.configs.load_configs`, so their pipelines are the app's and exist once. The model
repository folder is created here; uploaded MMAR/bundle models join it in the admin API.
"""

from __future__ import annotations

import importlib
import logging
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from monailabel.tasks.infer.basic_infer import BasicInferTask

from . import __version__
from .errors import NotFound

logger = logging.getLogger(__name__)


@dataclass
class ServedModel:
    """One servable model: its task and the model object `/v1/models` shows."""

    name: str
    task: BasicInferTask
    source: str
    version: str = __version__

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
            "engine": getattr(self.task, "engine", "torch"),
            "source": self.source,
            "status": "ready",
            **getattr(self.task, "model_info", {}),
        }


def load_app_models(app_dir: Path, models: str = "all") -> list[ServedModel]:
    """Instantiate the app's infer tasks the way its `main.py` does (weights from `app_dir/model`)."""
    app_dir = app_dir.resolve()
    if str(app_dir) not in sys.path:
        sys.path.insert(0, str(app_dir))
    configs = importlib.import_module("lib.configs")
    served = []
    for name, config in configs.load_configs(str(app_dir / "model"), {"models": models}).items():
        task = config.infer()
        if not any(Path(p).is_file() for p in task.path):  # is_valid() is true for any task with a network
            logger.warning("not serving '%s': no weights at %s (run `aiaa train %s`)", name, task.path, name)
            continue
        served.append(ServedModel(name=name, task=task, source="app"))
    return served


class ModelRegistry:
    def __init__(self, model_repo: Path, models: list[ServedModel]):
        self.model_repo = Path(model_repo)
        self.model_repo.mkdir(parents=True, exist_ok=True)
        self._models = {m.name: m for m in models}
        logger.info("serving %d model(s): %s", len(self._models), ", ".join(self._models))

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
