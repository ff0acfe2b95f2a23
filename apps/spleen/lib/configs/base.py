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
        """The task; its device and engine come from the conf (`device`, `engine_<name>` or `engine`, ...)."""
        return self.infer_class(path=self.path, network=self.network, model_name=self.name, conf=self.conf)

    def trainer(self):
        return None  # trained with `aiaa train <model>` (lib/trainers)
