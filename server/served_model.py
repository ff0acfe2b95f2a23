"""One served model: its MONAI Label task (`BasicInferTask` interface) and the model object `/v1/models` shows."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from monailabel.tasks.infer.basic_infer import BasicInferTask

from aiaa_core.vocabularies import EngineName

from . import __version__

__all__ = ["ServedModel"]


@dataclass
class ServedModel:
    """One servable model: its task and the model object `/v1/models` shows."""

    name: str
    task: BasicInferTask
    source: str
    version: str = __version__
    folder: Path | None = field(default=None, compare=False)  # its version folder in the store

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
            "engine": getattr(self.task, "engine", EngineName.TORCH),
            "source": self.source,
            "status": "ready",
            **getattr(self.task, "model_info", {}),
        }
