"""Typed errors whose message a clinician can act on; the Slicer layer shows `str(error)` as is."""

from __future__ import annotations


class AIAAError(Exception):
    """Anything that stopped an AIAA request; `status` is the HTTP status when the server answered."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class ServerUnreachable(AIAAError):
    """No answer: wrong address, server down, or slower than the timeout."""


class SessionExpired(AIAAError):
    """The server forgot the uploaded volume (HTTP 440), even after one re-upload."""


class ModelNotFound(AIAAError):
    """The server does not serve the chosen model (HTTP 404)."""


class BadInput(AIAAError):
    """The request cannot work as sent: too few points, a point outside the volume, a refused file."""


class ServerBusy(AIAAError):
    """The server is still loading models or is out of session space (HTTP 503)."""


class GeometryMismatch(AIAAError):
    """The returned mask is not on the grid that was sent, so applying it would paint the wrong voxels."""
