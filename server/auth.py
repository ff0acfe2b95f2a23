"""Admin authentication for `/admin/*` and the dashboard: HTTP Basic or a bearer token.

Credentials come from the environment (`AIAA_ADMIN_USER`, `AIAA_ADMIN_PASSWORD`, `AIAA_ADMIN_TOKEN`) or a
JSON config file (`{"user": ..., "password": ..., "token": ...}`), gathered into `Settings` by the CLI.
With none configured, a loopback-only server makes up a one-time password and prints it on the console
(like Jupyter's token; never in the log file or `/logs`, which would make anyone who reads them admin),
and a server on any other address keeps its admin API disabled: it is never open. Every password and
token is registered with `server.logs` so that no log line can carry it.
"""

from __future__ import annotations

import base64
import functools
import hmac
import ipaddress
import json
import logging
import os
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flask import current_app, request

from .errors import ApiError, Unauthorized
from .logs import register_secret

logger = logging.getLogger(__name__)

REALM = 'Basic realm="aiaa"'
GENERATED_USER = "admin"


@dataclass(frozen=True)
class AdminCredentials:
    user: str | None = None
    password: str | None = None
    token: str | None = None

    @property
    def configured(self) -> bool:
        return bool((self.user and self.password) or self.token)


def load_credentials(config_file: Path | None = None, environ: dict | None = None) -> AdminCredentials:
    """The environment wins over the config file, key by key."""
    environ = os.environ if environ is None else environ
    stored: dict = {}
    if config_file:
        stored = json.loads(Path(config_file).read_text(encoding="utf-8"))
        if not isinstance(stored, dict):
            raise ValueError(f"{config_file}: the admin config must be a JSON object")
    return AdminCredentials(
        user=environ.get("AIAA_ADMIN_USER") or stored.get("user"),
        password=environ.get("AIAA_ADMIN_PASSWORD") or stored.get("password"),
        token=environ.get("AIAA_ADMIN_TOKEN") or stored.get("token"),
    )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def effective_credentials(credentials: AdminCredentials, host: str) -> AdminCredentials | None:
    """What the server will accept: the configured credentials, a generated password on loopback, or None
    (admin API disabled) on a public bind without credentials."""
    if credentials.configured:
        register_secret(credentials.password)
        register_secret(credentials.token)
        return credentials
    if not is_loopback(host):
        logger.warning(
            "admin API and dashboard disabled: no credentials configured on a non-loopback bind (%s); "
            "set AIAA_ADMIN_USER and AIAA_ADMIN_PASSWORD (or AIAA_ADMIN_TOKEN)",
            host,
        )
        return None
    # hex: never a leading "-", which `aiaa models --password` would take for an option
    generated = AdminCredentials(user=GENERATED_USER, password=secrets.token_hex(12))
    register_secret(generated.password)
    logger.warning("no admin credentials configured: a one-time admin password for this run is on the console")
    print_to_console(
        f"no admin credentials configured: for this run use user '{generated.user}' password "
        f"'{generated.password}' (set AIAA_ADMIN_USER and AIAA_ADMIN_PASSWORD to choose your own)"
    )
    return generated


def print_to_console(message: str) -> None:
    """Straight to the process's stderr (the terminal, `docker logs`), past the logging handlers."""
    print(f"AIAA: {message}", file=sys.stderr, flush=True)


def _same(given: str | None, expected: str | None) -> bool:
    return given is not None and expected is not None and hmac.compare_digest(given.encode(), expected.encode())


def check_request(credentials: AdminCredentials | None) -> None:
    """Raise unless the current request carries the admin credentials."""
    if credentials is None:
        raise ApiError(
            "The admin API is disabled: this server listens on a public address and has no admin credentials; "
            "set AIAA_ADMIN_USER and AIAA_ADMIN_PASSWORD and restart it.",
            status=403,
            type="Forbidden",
        )
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and credentials.token and _same(value.strip(), credentials.token):
        return
    if scheme.lower() == "basic" and credentials.user and credentials.password:
        try:
            user, _, password = base64.b64decode(value.strip()).decode("utf-8").partition(":")
        except (ValueError, UnicodeDecodeError):
            user, password = "", ""
        if _same(user, credentials.user) and _same(password, credentials.password):
            return
    message = "Wrong admin credentials." if header else "Admin credentials required (curl -u user:password)."
    raise Unauthorized(message, headers={"WWW-Authenticate": REALM})


def admin_required(view: Callable) -> Callable:
    """Decorate a view (or use in a blueprint's before_request) so that it needs the admin credentials."""

    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        check_request(current_app.extensions["aiaa.admin_credentials"])
        return view(*args, **kwargs)

    return wrapped
