"""The MONAI Label app's own models (`apps/spleen`): built by the app's config classes, reached only through
`server.app_loader`. In the store an app model's version folder holds its weights (`models/model.pt`) and
its marker names the app model (`"model"`), so an admin can replace or delete it like any upload."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from aiaa_core.engines import CONF_DEVICE, EngineSettings
from aiaa_core.vocabularies import ModelFormat

from ..app_loader import app_configs
from ..errors import BadRequest
from ..model_store import ModelStore, sha256
from ..served_model import ServedModel
from .base import LoadContext, ModelFormatHandler
from .bundle import BundleFormat
from .mmar import MmarFormat

__all__ = ["APP_WEIGHTS", "AppFormat", "app_model", "app_model_names", "load_app_models"]

logger = logging.getLogger(__name__)

APP_WEIGHTS = Path("models") / "model.pt"


def app_model_names(app_dir: Path, models: str = "all") -> list[str]:
    """The app's model names that `models` ("all" or comma separated names) selects (parsed by the app)."""
    try:
        return app_configs(app_dir).model_names(models)
    except ValueError as error:
        raise ValueError(f"{error} (app {app_dir})") from None


def app_model(
    app_dir: Path,
    name: str,
    weights: Path,
    served_name: str | None = None,
    engines: EngineSettings | None = None,
    device: str | None = None,
) -> ServedModel:
    """One of the app's models, built by the app's own config class, with its weights read from `weights`;
    the device and engine settings reach its task through the app's MONAI Label `conf` (without them, the
    app's defaults: MONAI Label's device rule, engine `auto`)."""
    conf = {"models": name}
    if engines is not None:
        conf.update(engines.app_conf(device or "cpu"))
    elif device:
        conf[CONF_DEVICE] = device
    config = app_configs(app_dir).load_configs(str(weights.parent), conf)[name]
    config.path = str(weights)
    return ServedModel(name=served_name or name, task=config.infer(), source=ModelFormat.APP)


def load_app_models(app_dir: Path, models: str = "all") -> list[ServedModel]:
    """The app's models with the weights of the app's own `model/` folder (benchmarks, tests)."""
    served = []
    for name in app_model_names(app_dir, models):
        weights = app_dir / "model" / f"{name}.pt"
        if not weights.is_file():
            logger.warning("not serving '%s': no weights at %s (run `aiaa train %s`)", name, weights, name)
            continue
        served.append(app_model(app_dir, name, weights))
    return served


class AppFormat(ModelFormatHandler):
    """A version folder seeded from the app: its weights only; the task is the app's code."""

    format = ModelFormat.APP

    def detect(self, folder: Path) -> bool:
        uploaded = MmarFormat().detect(folder) or BundleFormat().detect(folder)
        return (folder / APP_WEIGHTS).is_file() and not uploaded

    def validate(self, folder: Path) -> None:
        if not (folder / APP_WEIGHTS).is_file():
            raise BadRequest(f"An app model's version folder holds its weights ({APP_WEIGHTS.as_posix()}); none here.")

    def build(self, folder: Path, name: str, context: LoadContext) -> ServedModel:
        if context.app_dir is None or "model" not in context.marker:
            raise BadRequest(f"'{name}' is an app model, but no app is configured to build it.")
        weights = folder / APP_WEIGHTS
        model = app_model(context.app_dir, context.marker["model"], weights, name, context.engines, context.device)
        model.version = str(context.marker.get("version", model.version))  # weights trained here name themselves
        return model

    @classmethod
    def seed(cls, store: ModelStore, app_dir: Path, name: str, current: Path | None) -> Path | None:
        """Commit the app's weights of `name` as a new version (first start, or the app's weights changed);
        None when there is nothing to do (no weights, up to date, or an upload replaced the app's model)."""
        weights = app_dir / "model" / f"{name}.pt"
        if not weights.is_file():
            if current is None:
                logger.warning("not serving '%s': no weights at %s (run `aiaa train %s`)", name, weights, name)
            return None
        digest = sha256(weights)
        if current is not None:
            marker = store.marker(current)
            if marker.get("format") != cls.format or marker.get("weights_sha256") == digest:
                return None  # an upload replaced it, or it is up to date
            logger.info("'%s': the app's weights changed; updating the store's copy", name)
        with store.staging() as work:
            folder = work / "model"
            (folder / APP_WEIGHTS).parent.mkdir(parents=True)
            shutil.copy2(weights, folder / APP_WEIGHTS)
            store.commit(folder, name, cls.format, model=name, weights_sha256=digest)
            target = store.new_version(name, folder)
        if current is not None:
            store.discard(current)
        return target

    def stored_config(self, folder: Path, model: ServedModel, marker: dict) -> dict:
        return {"source": ModelFormat.APP, "model": marker["model"], **model.info()}

    def write_config(self, folder: Path, name: str, config: dict) -> None:
        raise BadRequest(
            f"'{name}' is one of the app's models, configured in code; replace it with PUT /admin/model/{name}."
        )
