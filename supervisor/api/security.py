"""Access control at the edges: the API token and the WebSocket Origin check.

Invariants: a server bound beyond loopback never runs without a token (enforced at start-up);
a configured token is at least 16 characters (enforced by the settings); tokens are compared
in constant time, before a request's body is read; a browser Origin other than the server's
own or a configured one never gets a WebSocket (cross-site WebSocket hijacking).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from fastapi import Request, status
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from supervisor.api.api_errors import ApiError, user_error_response
from supervisor.core.exceptions import ConfigError
from supervisor.core.settings import Settings
from supervisor.errors import ErrorCode

__all__ = [
    "DocsTokenGate",
    "TokenGuard",
    "bearer_token",
    "check_exposure",
    "origin_allowed",
    "token_required",
    "token_valid",
]


def token_required() -> ApiError:
    """The 401 a request without a valid token gets."""
    return ApiError(
        status.HTTP_401_UNAUTHORIZED,
        code=ErrorCode.CONFIG_TOKEN_REQUIRED,
        title="A valid API token is required",
        message="send 'Authorization: Bearer <token>' (the server's GENVISOR_API_TOKEN)",
        headers={"WWW-Authenticate": "Bearer"},
    )


class TokenGuard:
    """The token check of one server's routes: a FastAPI dependency (``Depends(guard)``) that
    `UserErrorRoute` also runs on the headers before the body is read."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def refusal(self, headers: Mapping[str, str]) -> ApiError | None:
        return None if token_valid(self.settings, bearer_token(headers)) else token_required()

    def __call__(self, request: Request) -> None:
        denied = self.refusal(request.headers)
        if denied is not None:
            raise denied


class DocsTokenGate:
    """ASGI middleware: with a token set, the generated API docs (`paths`: /docs, /redoc,
    /openapi.json, ...) require it like every /v1 route. They are the app's, not the router's,
    so the route-level guard does not cover them."""

    def __init__(self, app: ASGIApp, *, guard: TokenGuard, paths: frozenset[str]) -> None:
        self.app = app
        self.guard = guard
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in self.paths:
            denied = self.guard.refusal(Headers(scope=scope))
            if denied is not None:
                response = user_error_response(
                    denied.status_code,
                    code=denied.code,
                    title=denied.title,
                    message=denied.message,
                    headers=denied.headers,
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def check_exposure(settings: Settings) -> None:
    """Refuse to serve beyond loopback without a token."""
    if settings.is_exposed and settings.api_token is None:
        raise ConfigError(
            key="api_token",
            value=None,
            allowed=(
                f"a token (set GENVISOR_API_TOKEN) when host is {settings.host!r}, which is not "
                "loopback; or bind host = 127.0.0.1"
            ),
        )


def bearer_token(headers: Mapping[str, str]) -> str | None:
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def token_valid(settings: Settings, presented: str | None) -> bool:
    """True when no token is configured, or `presented` matches it."""
    if settings.api_token is None:
        return True
    if presented is None:
        return False
    expected = settings.api_token.get_secret_value().encode()
    return secrets.compare_digest(expected, presented.encode())


_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _normalise(origin: str) -> str | None:
    """``scheme://host[:port]`` with the default port dropped, or None when `origin` is not a
    well-formed origin (a browser sends exactly that form; anything else, an unclosed IPv6
    bracket, a port out of range or not a number, credentials or a path, is refused, and a
    client's malformed header must never become a 500)."""
    try:
        parts = urlsplit(origin.strip().lower())
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname
    malformed = parts.username is not None or parts.path not in ("", "/") or parts.query
    if parts.scheme not in _DEFAULT_PORTS or not host or malformed or parts.fragment:
        return None
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if port is None or port == _DEFAULT_PORTS[parts.scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def origin_allowed(
    origin: str | None, *, host_header: str | None, scheme: str, allowed: Iterable[str]
) -> bool:
    """Whether a WebSocket handshake with this Origin may proceed.

    No Origin header means a non-browser client (curl, websockets, the CLI): browsers always
    send one, and the token (when exposed) guards the rest.
    """
    if origin is None:
        return True
    candidate = _normalise(origin)  # None for "null" (opaque origins) and malformed ones
    if candidate is None:
        return False
    if host_header and candidate == _normalise(f"{scheme}://{host_header}"):
        return True
    return candidate in {_normalise(a) for a in allowed}
