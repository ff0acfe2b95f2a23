"""What every model config of this app does: weights at model/<name>.pt, a network, an infer task, a trainer."""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from monailabel.interfaces.config import TaskConfig
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.tasks.train.basic_train import BasicTrainTask

from lib.trainers.task import AppTrainTask, run_folder


class AppModelConfig(TaskConfig):
    infer_class: type[BasicInferTask]
    trainer_class: type[AppTrainTask]
    network_factory: Callable[[], torch.nn.Module]

    def init(self, name: str, model_dir: str, conf: dict[str, str], planner, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        self.path = os.path.join(model_dir, f"{name}.pt")
        self.network = type(self).network_factory()

    def infer(self) -> BasicInferTask:
        """The task; its device and engine come from the conf (`device`, `engine_<name>` or `engine`, ...)."""
        return self.infer_class(path=self.path, network=self.network, model_name=self.name, conf=self.conf)

    def trainer(self, publish_path: str | None = None, load_path: str | None = None, **options) -> BasicTrainTask:
        """The model's MONAI Label train task (stock `monailabel start_server`, our server, `aiaa train`).

        It publishes its best weights to `publish_path` (default: the served model/<name>.pt) unless the
        request says `publish: false`, and starts from `load_path` (default: the published weights) when
        the request says `pretrained`. Runs are kept in `publish_path` without `.pt` (model/<name>/<run
        name>/), or in `<conf train_dir>/<name>/` (e.g. when the app folder is read-only, as in the wheel).
        `options`: the trainer's own (data_dir, ...).
        """
        publish_path = publish_path or self.path
        runs = os.path.join(self.conf["train_dir"], self.name) if self.conf.get("train_dir") else None
        return self.trainer_class(
            runs or run_folder(publish_path), load_path=load_path or publish_path, publish_path=publish_path, **options
        )
