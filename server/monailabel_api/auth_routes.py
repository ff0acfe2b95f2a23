"""MONAI Label's login for its Slicer module and OHIF: `/auth/`, `/auth/token`, `/auth/token/valid`.

Those clients ask `/auth/` whether login is on, post the user name and password to `/auth/token` (OAuth2
password form) and send back `Authorization: Bearer <access_token>`. The password is the admin's
(`server.auth`); the token is a random one held in memory for `TOKEN_TTL_S` (at most `MAX_TOKENS`, the
oldest dropped), never the password or the configured admin token. Routes of this API that need the admin
take either (`admin_or_token`); the AIAA admin API takes only the configured credentials.
"""

from __future__ import annotations

import functools
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from flask import Blueprint, current_app, jsonify, request

from ..auth import check_request
from ..errors import BadRequest, Unauthorized
from ..logs import register_secret
from ..openapi import document, form_body, json_reply
from . import PREFIX

bp = Blueprint("monailabel_auth", __name__, url_prefix=PREFIX)

TOKEN_TTL_S = 8 * 3600.0
MAX_TOKENS = 256
MAX_FIELD = 256


class TokenIssuer:
    """Access tokens for MONAI Label's clients: random, expiring, bounded in number."""

    def __init__(self, ttl_s: float = TOKEN_TTL_S, max_tokens: int = MAX_TOKENS):
        self.ttl_s, self.max_tokens = ttl_s, max_tokens
        self._tokens: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def issue(self) -> str:
        token = secrets.token_hex(24)
        register_secret(token)  # never in a log line
        with self._lock:
            self._tokens[token] = time.monotonic() + self.ttl_s
            while len(self._tokens) > self.max_tokens:
                self._tokens.popitem(last=False)
        return token

    def valid(self, token: str) -> bool:
        now = time.monotonic()
        with self._lock:
            for stale in [t for t, expiry in self._tokens.items() if expiry < now]:
                del self._tokens[stale]
            return any(hmac.compare_digest(token.encode(), known.encode()) for known in self._tokens)


def tokens() -> TokenIssuer:
    return current_app.extensions["aiaa.monailabel_tokens"]


def bearer() -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def admin_or_token(view: Callable) -> Callable:
    """The admin's credentials (`server.auth`) or a token from `/monailabel/auth/token`."""

    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        token = bearer()
        if token is None or not tokens().valid(token):
            check_request(current_app.extensions["aiaa.admin_credentials"])
        return view(*args, **kwargs)

    return wrapped


@bp.get("/auth/")
@document(reply=json_reply("Whether login is on (it is whenever the admin API is)."))
def auth_info():
    """Tells MONAI Label's clients to log in (with the server's admin user and password)."""
    enabled = current_app.extensions["aiaa.admin_credentials"] is not None
    return jsonify({"enabled": enabled, "client_id": "aiaa", "realm": "aiaa"})


@bp.post("/auth/token")
@document(
    body=form_body({"username": {"type": "string"}, "password": {"type": "string"}}, required=["username", "password"]),
    reply=json_reply("An access token for the admin's operations of this API."),
    errors=(400, 401, 403),
)
def auth_token():
    """Log in with the admin's user name and password: an access token (bearer), valid for hours."""
    credentials = current_app.extensions["aiaa.admin_credentials"]
    user, password = request.form.get("username", ""), request.form.get("password", "")
    if len(user) > MAX_FIELD or len(password) > MAX_FIELD:
        raise BadRequest(f"'username' and 'password' are at most {MAX_FIELD} characters.")
    if credentials is None:
        check_request(None)  # the admin API is disabled: 403, as for the rest
    known = credentials.user and credentials.password
    if not known or not (
        hmac.compare_digest(user.encode(), credentials.user.encode())
        and hmac.compare_digest(password.encode(), credentials.password.encode())
    ):
        raise Unauthorized("Wrong user name or password.")
    # OAuth's token type name (RFC 6750), not a secret: bandit's B105 reads any "token" string as a password.
    token_type = "bearer"  # nosec B105
    return jsonify({"access_token": tokens().issue(), "token_type": token_type, "expires_in": int(TOKEN_TTL_S)})


@bp.get("/auth/token/valid")
@document(reply=json_reply("{} while the token is valid."), errors=(401,))
def token_valid():
    """200 while the request's bearer token (issued here, or the configured admin token) is valid."""
    admin_or_token(lambda: None)()
    return jsonify({})
