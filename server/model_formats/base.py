"""The one interface every model format implements (`ModelFormatHandler`), so the registry never switches on
a format's name: it asks the handler of the folder's format (`ModelFormat` in its marker) to build the
model, show its config and write a new one.

A handler answers four questions about a model folder: is it this format (`detect`), is its layout sound
(`validate`, cheap: files only), what model does it serve (`build`: checked, allow-listed, nothing of the
upload runs but tensor math), and which config an admin reads and replaces (`config_file`).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from aiaa_core.engines import EngineSettings
from aiaa_core.vocabularies import ModelFormat

from ..errors import BadRequest
from ..served_model import ServedModel

__all__ = ["LoadContext", "ModelFormatHandler"]


@dataclass(frozen=True)
class LoadContext:
    """What building a model may depend on besides its folder: the server's settings, passed in."""

    device: str = "cpu"
    app_dir: Path | None = None  # the MONAI Label app whose models are served (the `app` format)
    engines: EngineSettings = field(default_factory=EngineSettings)  # `aiaa serve --engine/--model-engine`
    marker: dict = field(default_factory=dict)  # the folder's commit marker, once it has one


class ModelFormatHandler(ABC):
    """One model format: detected from a folder's files, built into a `ServedModel`."""

    format: ModelFormat

    @abstractmethod
    def detect(self, folder: Path) -> bool:
        """Does `folder` hold a model of this format (by its files alone)?"""

    def validate(self, folder: Path) -> None:
        """Refuse (400) a folder whose layout this format cannot serve; reads files, runs nothing."""
        if not self.detect(folder):
            raise BadRequest(f"Not a {self.format} model folder.")

    @abstractmethod
    def build(self, folder: Path, name: str, context: LoadContext) -> ServedModel:
        """The served model of `folder`, named `name` (a 400 names what is wrong with an upload)."""

    def config_file(self, folder: Path) -> Path | None:
        """The config the model was installed with, or None when it is configured in code."""
        return None

    def stored_config(self, folder: Path, model: ServedModel, marker: dict) -> dict:
        """`GET /admin/model/<name>`: the installed config (a JSON or YAML file, read as data)."""
        path = self.config_file(folder)
        if path is None:
            raise BadRequest(f"'{model.name}' has no stored config.")
        text = path.read_text(encoding="utf-8")
        if path.suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text)
        return json.loads(text)

    def write_config(self, folder: Path, name: str, config: dict) -> None:
        """Replace the config in `folder`, a private copy of the installed version (`PATCH`)."""
        target = self.config_file(folder)
        if target is None:
            raise BadRequest(f"'{name}' is configured in code; replace it with PUT /admin/model/{name}.")
        for stale in self.config_files(folder):
            stale.unlink(missing_ok=True)  # a new file, never a write through a link shared with the old one
        target.with_suffix(".json").write_text(json.dumps(config, indent=2), encoding="utf-8")

    def config_files(self, folder: Path) -> list[Path]:
        """Every file that could be read as the config (all are replaced by a new one)."""
        path = self.config_file(folder)
        return [] if path is None else [path]
