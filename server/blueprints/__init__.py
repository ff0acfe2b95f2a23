"""One blueprint per area of the API. They reach the app's registry, session store and scheduler through
`server.app_context`, re-exported here for `from . import scheduler`."""

from __future__ import annotations

from ..app_context import registry, scheduler, session_store

__all__ = ["registry", "scheduler", "session_store"]
