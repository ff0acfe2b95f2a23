"""MONAI Label app: spleen segmentation (and, as they land, DeepGrow 3D and extreme points).

Runs under stock `monailabel start_server --app apps/spleen --studies DIR`; our AIAA server loads the
same model configs through `lib.configs.load_configs`, so the pipelines exist once. Each model's config
also gives its trainer (a MONAI Label BasicTrainTask, lib/trainers): POST /train/<model> fine-tunes it on
the datastore's final labels plus synthetic phantoms, and `aiaa train <model>` runs the same task.
"""

from __future__ import annotations

import logging
import os

from monailabel.interfaces.app import MONAILabelApp

from lib.configs import load_configs

logger = logging.getLogger(__name__)


class SpleenApp(MONAILabelApp):
    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]):
        self.model_dir = os.path.join(app_dir, "model")
        self.models = load_configs(self.model_dir, conf)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="MONAI Label - Spleen",
            description="Spleen CT models trained on synthetic phantoms",
            version="0.1.0",
        )

    def init_infers(self):
        return {name: config.infer() for name, config in self.models.items()}

    def init_trainers(self):
        return {name: t for name, config in self.models.items() if (t := config.trainer())}
