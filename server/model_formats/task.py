"""The one task class every uploaded model (MMAR or bundle) becomes: a MONAI Label `BasicInferTask`
whose transforms, inferer and network were built once, from the upload's config, at load time.

It takes the app's fast path (`fast_path`): at install and at warm-up the network moves to the engine
the server chooses for it when that engine's output matches the upload's own within a checked tolerance,
and its point-independent pre-processing is `prepare`d once per session image (handed back under
`PREPARED`), as the app's tasks do.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from monai.inferers import Inferer
from monai.transforms import Invertd, InvertibleTransform
from monailabel.interfaces.utils.transform import run_transforms
from monailabel.tasks.infer.basic_infer import BasicInferTask

from aiaa_core.engines import EngineSettings, paced
from aiaa_core.keys import PREPARED
from aiaa_core.vocabularies import EngineName

from ..served_model import ServedModel
from .adapters import LoadServerImaged, Restored, app_transforms
from .fast_path import check_shape, choose_engine, point_free_prefix
from .weights import find_weights, load_weights

logger = logging.getLogger(__name__)

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

    def __init__(
        self,
        spec: TaskSpec,
        network: torch.nn.Module,
        engine: str,
        engines: EngineSettings | None = None,
        model_name: str | None = None,
    ):
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
        self.uploaded_engine = engine  # what runs the network as uploaded (until `choose_engine`)
        self.engines = engines if engines is not None else EngineSettings()  # the server's choices, passed in
        self.model_name = model_name
        self.engine_note = f"{engine} (as uploaded)"
        self.model_info = {k: v for k, v in spec.model_info.items() if k not in RESERVED_INFO}
        self._network = network
        self._chosen: dict[str, torch.nn.Module] = {}  # device → the engine chosen for it
        self._engine_lock = threading.Lock()
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
        self._point_free = point_free_prefix(self._pre, spec.input_key)
        self._check_shape = check_shape(network, self._inferer) if isinstance(network, torch.nn.Module) else None

    def is_valid(self) -> bool:
        return True

    def pre_transforms(self, data=None) -> Sequence[Callable]:
        return self._pre  # the same instances every call: `Restored` inverts through them

    def inferer(self, data=None) -> Inferer:
        return self._inferer

    def post_transforms(self, data=None) -> Sequence[Callable]:
        return self._post

    # --- engine -----------------------------------------------------------------------------------------

    @property
    def engine(self) -> str:
        """What runs the network: the engine chosen at install or warm-up (the server's one device), else the
        upload's own."""
        chosen = next(iter(self._chosen.values()), None)
        return getattr(chosen, "engine", self.uploaded_engine)

    def choose_engine(self, device: str = "cpu") -> torch.nn.Module:
        """The network on `device` as the server's engine choice, once it passed the tolerance check."""
        device = str(device)
        with self._engine_lock:
            if device not in self._chosen:
                uploaded = self._uploaded_on(device)
                chosen, self.engine_note = choose_engine(
                    uploaded, self._check_shape, self.engines, device, self.model_name
                )
                self._chosen[device] = chosen
            return self._chosen[device]

    def warm_up(self, device: str = "cpu") -> None:
        """Choose the engine (at install and start-up, so no request pays for the export or the check)."""
        self.choose_engine(device)

    def _uploaded_on(self, device: str) -> torch.nn.Module:
        """The network as uploaded, on `device` (a copy per device; an ONNX Runtime session stays on the CPU)."""
        network = self._networks.get(device)
        if network is None:
            on_cpu = device == "cpu" or self.uploaded_engine == EngineName.ONNXRUNTIME
            network = self._network if on_cpu else copy.deepcopy(self._network).to(device)
            self._networks[device] = network
        return network

    def _get_network(self, device, data):
        """The chosen engine when one was chosen for `device` (install, warm-up), else the upload's network,
        paced by the request's scheduler when it brings one."""
        chosen = self._chosen.get(str(device))
        return paced(chosen if chosen is not None else self._uploaded_on(str(device)), data)

    # --- pre-processing -----------------------------------------------------------------------------------

    def prepare(self, image) -> dict:
        """The point-independent pre-processing of `image` (a decoded channel-first MetaTensor), which the
        server keeps in the session; later steps only read it."""
        return run_transforms({"image": image}, self._point_free, log_prefix="PREP")  # as a request carries it

    def run_pre_transforms(self, data, transforms):
        prepared = data.pop(PREPARED, None)
        if prepared is None:
            return super().run_pre_transforms(data, transforms)
        data.update(prepared)
        return super().run_pre_transforms(data, transforms[len(self._point_free) :])


def configured_model(
    folder: Path,
    name: str,
    fmt: str,
    spec: TaskSpec,
    network: Callable[[], torch.nn.Module] | None,
    engines: EngineSettings,
) -> ServedModel:
    """An upload's served model: its weights loaded (checked, `weights`), its task built from `spec`."""
    module, uploaded_engine = load_weights(find_weights(folder / "models"), network)
    task = ConfiguredTask(spec, module, uploaded_engine, engines=engines, model_name=name)
    return ServedModel(name=name, task=task, source=fmt, version=spec.version)
