"""Which Host names the server answers (DNS rebinding) and which browser origins may use it (CORS).

Allowed hosts: a web page on any site can make the browser of a clinician send requests to a name it
controls that it then points at 127.0.0.1 or at a server on the hospital network (DNS rebinding),
and read the replies as same-origin. The Host header still carries that name, so a request whose Host
is not in the list gets 421. The list defaults to the loopback names on a loopback bind (where such
pages are the threat and the clients use 127.0.0.1 or localhost) and to any name elsewhere; `*` allows
any. A name that starts with a dot also allows its subdomains. The loopback names are always allowed
(no rebinding page can send them, and the container's health check uses them).

CORS: no reply carries `Access-Control-Allow-Origin` unless the request's `Origin` is listed (or the
list is `*`): by default no other site's script can read a reply. A request with a body or side effect
(not GET/HEAD/OPTIONS) from a browser page of another origin that is not listed is refused (403)
before it runs: browsers send such form posts without asking first. The AIAA clients send no Origin.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Flask, request

from .auth import is_loopback
from .errors import ApiError
from .settings import Settings

ANY = "*"
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CORS_METHODS = "GET, POST, PUT, PATCH, DELETE"
CORS_HEADERS = "Authorization, Content-Type"
CORS_MAX_AGE_S = 600


class MisdirectedRequest(ApiError, status=421):
    """The Host header names a host this server does not serve."""


class CrossOriginRefused(ApiError, status=403):
    """A browser request from an origin that is not allowed."""

    type = "Forbidden"


def effective_allowed_hosts(settings: Settings) -> tuple[str, ...]:
    """The names served: the setting, else the loopback names on a loopback bind, else any (`()`)."""
    names = tuple(name.strip().lower().rstrip(".") for name in settings.allowed_hosts if name.strip())
    if ANY in names:
        return ()
    if names:
        return names + LOOPBACK_NAMES  # the container's health check and local tools call 127.0.0.1
    return LOOPBACK_NAMES if is_loopback(settings.host) else ()


def host_name(host_header: str) -> str:
    """`[::1]:5000` → `::1`, `Example.org.:80` → `example.org`."""
    host = host_header.strip().lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    else:
        host = host.partition(":")[0]
    return host.rstrip(".")


def host_allowed(host_header: str | None, allowed: tuple[str, ...]) -> bool:
    if not allowed:
        return True
    if host_header is None:  # HTTP/1.0 clients send none; browsers (the DNS-rebinding vector) always do
        return True
    if not host_header.strip():
        return False
    name = host_name(host_header)
    return any(name == entry or (entry.startswith(".") and name.endswith(entry)) for entry in allowed)


def register_origin_policy(app: Flask, settings: Settings) -> None:
    """Refuse unlisted Host names and unlisted cross-origin writes first; add CORS headers to the replies."""
    allowed_hosts = effective_allowed_hosts(settings)
    origins = tuple(origin.strip().rstrip("/") for origin in settings.cors_origins if origin.strip())

    def origin_listed(origin: str) -> bool:
        return ANY in origins or origin in origins

    @app.before_request
    def check_host_and_origin():
        host = request.headers.get("Host")
        if not host_allowed(host, allowed_hosts):
            raise MisdirectedRequest(
                "This server does not answer to that Host name; connect with one of its configured names "
                "(aiaa serve --allowed-hosts)."
            )
        origin = request.headers.get("Origin")
        if origin and request.method not in SAFE_METHODS and not origin_listed(origin):
            if urlsplit(origin).netloc.lower() != (host or "").lower():
                raise CrossOriginRefused(
                    "Cross-origin request refused: this page's origin is not allowed (aiaa serve --cors-origins)."
                )

    @app.after_request
    def cors_headers(response):
        origin = request.headers.get("Origin")
        if origins:
            response.vary.add("Origin")
        if origin and origin_listed(origin):
            response.headers["Access-Control-Allow-Origin"] = ANY if origins == (ANY,) else origin
            if request.method == "OPTIONS":
                response.headers["Access-Control-Allow-Methods"] = CORS_METHODS
                response.headers["Access-Control-Allow-Headers"] = CORS_HEADERS
                response.headers["Access-Control-Max-Age"] = str(CORS_MAX_AGE_S)
        return response
