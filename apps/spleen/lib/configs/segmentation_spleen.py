"""segmentation_spleen: automatic spleen segmentation (type `segmentation`, labels ["spleen"])."""

from lib.infers import SegmentationSpleen
from lib.networks import segmentation_network
from lib.trainers.segmentation_spleen import SegmentationSpleenTrainer

from .base import AppModelConfig


class SegmentationSpleenConfig(AppModelConfig):
    infer_class = SegmentationSpleen
    network_factory = staticmethod(segmentation_network)
    trainer_class = SegmentationSpleenTrainer
