"""deepgrow_3d: foreground/background clicks → object mask (type `deepgrow`, `deepgrow: "3D"`, labels [])."""

from lib.infers import DeepGrow3D
from lib.networks import deepgrow_network
from lib.trainers.deepgrow_3d import DeepGrow3DTrainer

from .base import AppModelConfig


class DeepGrow3DConfig(AppModelConfig):
    infer_class = DeepGrow3D
    network_factory = staticmethod(deepgrow_network)
    trainer_class = DeepGrow3DTrainer
