"""segmentation_spleen: automatic spleen segmentation (type `segmentation`, labels ["spleen"])."""

from __future__ import annotations

import os

from monailabel.interfaces.config import TaskConfig

from lib.infers import SegmentationSpleen
from lib.networks import segmentation_network


class SegmentationSpleenConfig(TaskConfig):
    def init(self, name: str, model_dir: str, conf: dict[str, str], planner, **kwargs):
        super().init(name, model_dir, conf, planner, **kwargs)
        self.labels = {"spleen": 1}
        self.path = os.path.join(model_dir, f"{name}.pt")
        self.network = segmentation_network()

    def infer(self) -> SegmentationSpleen:
        return SegmentationSpleen(path=self.path, network=self.network, labels=tuple(self.labels))

    def trainer(self):
        return None  # trained with `aiaa train segmentation_spleen` (lib/trainers)
