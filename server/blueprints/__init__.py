"""One blueprint per area of the API; `scheduler()` is how any of them reaches the app's scheduler."""

from __future__ import annotations

from flask import current_app

from ..scheduler import Scheduler


def scheduler() -> Scheduler:
    """The current app's scheduler (`create_app` makes one per app)."""
    return current_app.extensions["aiaa.scheduler"]
