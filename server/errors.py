"""Errors a request can end in, each with its HTTP status and a message a clinician can act on.

Every module raises these; the app turns them into the contract's JSON body in one place
(`server.app.register_error_handlers`). Anything else that escapes is a bug and becomes a 500.
"""

from __future__ import annotations


class ApiError(Exception):
    """An error reply: `status`, a short `type` and a one-line `message`."""

    status = 500
    type = "InternalError"

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


class BadRequest(ApiError):
    status = 400
    type = "BadRequest"


class Unauthorized(ApiError):
    status = 401
    type = "Unauthorized"


class NotFound(ApiError):
    status = 404
    type = "NotFound"


class PayloadTooLarge(ApiError):
    status = 413
    type = "PayloadTooLarge"


class UnsupportedMediaType(ApiError):
    status = 415
    type = "UnsupportedMediaType"


class SessionExpired(ApiError):
    status = 440
    type = "SessionExpired"


class ServiceUnavailable(ApiError):
    status = 503
    type = "ServiceUnavailable"
