"""extreme_points: six or more extreme points → object mask (type `annotation`, DExtr3D style, labels [])."""

from lib.infers import ExtremePoints
from lib.networks import extreme_points_network
from lib.trainers.extreme_points import ExtremePointsTrainer

from .base import AppModelConfig


class ExtremePointsConfig(AppModelConfig):
    infer_class = ExtremePoints
    network_factory = staticmethod(extreme_points_network)
    trainer_class = ExtremePointsTrainer
