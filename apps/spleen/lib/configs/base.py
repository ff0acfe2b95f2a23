"""What every model config of this app does: weights at model/<name>.pt, a network, an infer task."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from monailabel.interfaces.config import TaskConfig
from monailabel.tasks.infer.basic_infer import BasicInferTask


class AppModelConfig(TaskConfig):
    infer_class: type[BasicInferTask]
    network_factory: Callable[[], torch.nn.Module]

    def init(self, name: str, model_dir: str, conf: dict[str, str], planner, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        self.path = os.path.join(model_dir, f"{name}.pt")
        self.network = type(self).network_factory()

    def infer(self) -> BasicInferTask:
        """The task; its engine is the conf's `engine_<name>` or `engine` (auto, torch, torchscript, onnxruntime)."""
        engine = self.conf.get(f"engine_{self.name}") or self.conf.get("engine") or "auto"
        return self.infer_class(path=self.path, network=self.network, engine=engine, model_name=self.name)

    def trainer(self):
        return None  # trained with `aiaa train <model>` (lib/trainers)
