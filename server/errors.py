"""Errors a request can end in, each with its HTTP status and a message a clinician can act on.

Every module raises these; the app turns them into the contract's JSON body in one place
(`server.app.register_error_handlers`). Anything else that escapes is a bug and becomes a 500.
"""

from __future__ import annotations


class ApiError(Exception):
    """An error reply: `status`, a short `type` and a one-line `message`."""

    status = 500
    type = "InternalError"

    def __init_subclass__(cls, status: int | None = None, **kwargs):
        """`class NotFound(ApiError, status=404)`: the status on the class line, the type its name."""
        super().__init_subclass__(**kwargs)
        if status is not None:  # a new kind of error; a subclass without a status keeps its parent's
            cls.status = status
            cls.type = cls.__dict__.get("type", cls.__name__)

    def __init__(
        self, message: str, *, status: int | None = None, type: str | None = None, headers: dict | None = None
    ):
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type

    def to_json(self) -> dict:
        return {"error": {"type": self.type, "message": self.message}, "success": False}


class BadRequest(ApiError, status=400):
    """The request is malformed or breaks a limit that does not depend on its size."""


class Unauthorized(ApiError, status=401):
    """The admin credentials are missing or wrong."""


class NotFound(ApiError, status=404):
    """No such model, session or route."""


class PayloadTooLarge(ApiError, status=413):
    """The request, or what it would make the server allocate, is over a size limit."""


class UnsupportedMediaType(ApiError, status=415):
    """The upload is not in a format the server reads."""


class SessionExpired(ApiError, status=440):
    """The session is gone (expired or never existed): AIAA clients upload the image again."""


class ServiceUnavailable(ApiError, status=503):
    """The server is not ready or its queues are full: try again later."""
