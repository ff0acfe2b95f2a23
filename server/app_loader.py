"""The one way the server (and the tests and benchmarks) reach a MONAI Label app.

A MONAI Label app is a folder holding `main.py` and a `lib` package that imports itself as `lib.*`;
`monailabel start_server` puts the folder on `sys.path` and so do we, here and nowhere else. Only one
app's `lib` can live in a process: loading a second, different app is refused rather than silently
serving the first one's code.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

__all__ = ["AppLoadError", "app_configs", "default_app_dir", "import_app", "import_app_module"]

APP_PACKAGE = "lib"  # MONAI Label's convention: the app's code is the package `lib` inside the app folder


class AppLoadError(RuntimeError):
    """The app folder is missing, or another app's `lib` is already loaded in this process."""


def default_app_dir() -> Path:
    """The app served when none is configured: `apps/spleen` of the checkout, or of the installed wheel."""
    checkout = Path(__file__).resolve().parents[1] / "apps" / "spleen"
    if (checkout / "main.py").is_file():
        return checkout
    import aiaa_apps  # the wheel ships the app as package data beside `server`

    return Path(aiaa_apps.__file__).resolve().parent / "spleen"


def import_app(app_dir: Path) -> ModuleType:
    """The app's `lib` package, imported from `app_dir` (the single `sys.path` edit of the project)."""
    app_dir = Path(app_dir).resolve()
    if not (app_dir / APP_PACKAGE / "__init__.py").is_file():
        raise AppLoadError(f"{app_dir} is not a MONAI Label app folder (no {APP_PACKAGE}/__init__.py)")
    loaded = sys.modules.get(APP_PACKAGE)
    if loaded is not None:
        origin = Path(loaded.__file__ or "").resolve().parent.parent
        if origin != app_dir:
            raise AppLoadError(f"the app at {origin} is already loaded in this process; cannot also load {app_dir}")
        return loaded
    if str(app_dir) not in sys.path:
        sys.path.insert(0, str(app_dir))
    return importlib.import_module(APP_PACKAGE)


def import_app_module(app_dir: Path, name: str) -> ModuleType:
    """One module of the app, e.g. `import_app_module(app_dir, "lib.export")`."""
    import_app(app_dir)
    return importlib.import_module(name)


def app_configs(app_dir: Path) -> ModuleType:
    """The app's `lib.configs`: its model names and one config object per model."""
    return import_app_module(app_dir, f"{APP_PACKAGE}.configs")
