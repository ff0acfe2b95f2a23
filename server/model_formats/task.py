"""The one task class every uploaded model (MMAR or bundle) becomes: a MONAI Label `BasicInferTask`
whose transforms, inferer and network were built once, from the upload's config, at load time."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from monai.inferers import Inferer
from monai.transforms import Invertd, InvertibleTransform
from monailabel.tasks.infer.basic_infer import BasicInferTask

from aiaa_core.vocabularies import EngineName

from .adapters import LoadServerImaged, Restored, app_transforms

RESERVED_INFO = {"name", "type", "labels", "description", "version", "status", "source", "engine", "dimension"}


@dataclass
class TaskSpec:
    """Everything a reader got out of a config; `ConfiguredTask` runs it."""

    type: str
    labels: list[str]
    description: str
    version: str
    pre_transforms: list[Callable]
    inferer: Inferer
    post_transforms: list[Callable]
    input_key: str = "image"
    output_key: str = "pred"
    dimension: int = 3
    model_info: dict = field(default_factory=dict)


class ConfiguredTask(BasicInferTask):
    """A task built from a config: no code of the upload runs, only allow-listed classes with JSON args.

    The pipeline always ends on the input grid: the decoded image is loaded first (`LoadServerImaged`
    when the config has no loader), every invertible pre-transform is undone (`Restored`, added at the
    end when the config has neither it nor MONAI's `Invertd`) and the app's `RestoreGeometryd` makes
    the final channel-less mask.
    """

    def __init__(self, spec: TaskSpec, network: torch.nn.Module, engine: str):
        super().__init__(
            path=None,
            network=None,
            type=spec.type,
            labels=spec.labels,
            dimension=spec.dimension,
            description=spec.description,
            input_key=spec.input_key,
            output_label_key=spec.output_key,
        )
        self.engine = engine
        self.model_info = {k: v for k, v in spec.model_info.items() if k not in RESERVED_INFO}
        self._network = network
        self._inferer = spec.inferer
        self._pre = list(spec.pre_transforms)
        if not any(isinstance(t, LoadServerImaged) for t in self._pre):
            self._pre.insert(0, LoadServerImaged(keys=spec.input_key, ensure_channel_first=True))
        self._post = list(spec.post_transforms)
        if any(isinstance(t, InvertibleTransform) for t in self._pre) and not any(
            isinstance(t, (Restored, Invertd)) for t in self._post
        ):
            self._post.append(Restored(keys=spec.output_key, ref_image=spec.input_key, when_off_grid=True))
        for t in self._post:
            if isinstance(t, Restored):
                t.bind(self._pre)
        self._post.append(app_transforms.RestoreGeometryd(keys=spec.output_key, ref_image=spec.input_key))

    def is_valid(self) -> bool:
        return True

    def pre_transforms(self, data=None) -> Sequence[Callable]:
        return self._pre  # the same instances every call: `Restored` inverts through them

    def inferer(self, data=None) -> Inferer:
        return self._inferer

    def post_transforms(self, data=None) -> Sequence[Callable]:
        return self._post

    def _get_network(self, device, data):
        """The network on `device` (a copy per device; an ONNX Runtime session stays on the CPU)."""
        network = self._networks.get(device)
        if network is None:
            on_cpu = str(device) == "cpu" or self.engine == EngineName.ONNXRUNTIME
            network = self._network if on_cpu else copy.deepcopy(self._network).to(device)
            self._networks[device] = network
        return network
