"""The one way request code (blueprints, the MONAI Label routes, uploads) reaches the objects `create_app`
made for the current app: its registry, session store and scheduler (kept in `app.extensions`)."""

from __future__ import annotations

from flask import current_app

from .registry import ModelRegistry
from .scheduler import Scheduler
from .sessions import SessionStore


def registry() -> ModelRegistry:
    """The current app's model registry."""
    return current_app.extensions["aiaa.registry"]


def session_store() -> SessionStore:
    """The current app's session store (in memory, or Redis in a cluster)."""
    return current_app.extensions["aiaa.sessions"]


def scheduler() -> Scheduler:
    """The current app's scheduler (`create_app` makes one per app)."""
    return current_app.extensions["aiaa.scheduler"]
