"""What the app's three tasks share: a fast engine for the network, and pre-processing split where it
starts to depend on the request's points.

The point-independent part (`prepare`) can be run once per image and handed back with every request
under `PREPARED` (our server keeps it in the session), so a click only crops, infers and pastes back.
Under stock MONAI Label nothing is prepared and the whole pipeline runs from the image path.

The device and engine come from the app's MONAI Label `conf` (`device`, `engine`, `engine_<model>`,
`engine_threads`, `engine_cache`; `aiaa_core.engines.EngineSettings.from_conf`), which our server fills
from its settings; without them (stock `monailabel start_server`) MONAI Label's device rule and `auto` apply.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence

import torch
from monailabel.interfaces.utils.transform import run_transforms
from monailabel.tasks.infer.basic_infer import BasicInferTask
from monailabel.utils.others.generic import name_to_device

from aiaa_core.engines import CONF_DEVICE, Engine, EngineSettings, build_engine, check_engine, paced, resolve_engine
from aiaa_core.keys import PREPARED  # request key: the output of `prepare` for the request's image


class AppInferTask(BasicInferTask):
    """A `BasicInferTask` whose network runs on the chosen engine (`auto`: the fastest measured here).

    `engine` (explicit) wins over the `conf`'s choice for `model_name`."""

    def __init__(
        self,
        path,
        network,
        engine: str | None = None,
        model_name: str | None = None,
        conf: Mapping[str, str] | None = None,
        **kwargs,
    ):
        super().__init__(path=path, network=network, **kwargs)
        self.model_name = model_name
        self.engines = EngineSettings.from_conf(conf, model_name)
        self.engine_choice = check_engine(engine) if engine else self.engines.choice(model_name)
        self.device = (conf or {}).get(CONF_DEVICE) or name_to_device(None)  # none given: MONAI Label's rule
        self._engine_lock = threading.Lock()
        self._built: tuple[tuple, Engine] | None = None

    # --- engine -----------------------------------------------------------------------------------------

    @property
    def example_shape(self) -> tuple[int, ...]:
        """One network input (channels first, no batch): what the engine is traced/exported with."""
        raise NotImplementedError

    @property
    def engine(self) -> str:
        """What runs the network: the built engine's name, else what the choice resolves to here."""
        if self._built is not None:
            return self._built[1].engine
        return resolve_engine(self.engine_choice, self.device, self.model_name, self.engines)

    def _get_network(self, device, data):
        """MONAI Label's eager network (weights loaded, reloaded when the file changes) as the engine, paced
        by the request's scheduler when it brings one (`aiaa_core.engines.PACING`)."""
        with self._engine_lock:
            network = super()._get_network(device, data)
            key = (str(device), id(network))
            if self._built is None or self._built[0] != key:
                engine = build_engine(
                    network,
                    self.engine_choice,
                    self.example_shape,
                    device=str(device),
                    model=self.model_name,
                    settings=self.engines,
                )
                self._built = (key, engine)
            return paced(self._built[1], data)

    def warm_up(self, device: str | None = None) -> None:
        """Build the engine and run it once, so the first request does not pay for it."""
        self._get_network(device or self.device, None)(torch.zeros(1, *self.example_shape))

    # --- pre-processing -----------------------------------------------------------------------------------

    def point_independent_transforms(self) -> list[Callable]:
        """The leading pre-transforms that depend on the image only (from loading it on)."""
        raise NotImplementedError

    def point_dependent_transforms(self) -> list[Callable]:
        return []

    def pre_transforms(self, data=None) -> Sequence[Callable]:
        return [*self.point_independent_transforms(), *self.point_dependent_transforms()]

    def prepare(self, image) -> dict:
        """The point-independent pre-processing of `image` (a path, or a decoded channel-first MetaTensor).

        The result must not be modified by later steps: `run_pre_transforms` only reads it.
        """
        return run_transforms({"image": image}, self.point_independent_transforms(), log_prefix="PREP")

    def run_pre_transforms(self, data, transforms):
        prepared = data.pop(PREPARED, None)
        if prepared is None:
            return super().run_pre_transforms(data, transforms)
        data.update(prepared)
        return super().run_pre_transforms(data, transforms[len(self.point_independent_transforms()) :])
