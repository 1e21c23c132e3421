"""Access control at the edges: the API token and the WebSocket Origin check.

Invariants: a server bound beyond loopback never runs without a token (enforced at start-up);
tokens are compared in constant time; a browser Origin other than the server's own or a
configured one never gets a WebSocket (cross-site WebSocket hijacking).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from supervisor.core.exceptions import ConfigError
from supervisor.core.settings import Settings

__all__ = ["bearer_token", "check_exposure", "origin_allowed", "token_valid"]


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


def _normalise(origin: str) -> str:
    parts = urlsplit(origin.strip().lower())
    default_port = {"http": 80, "https": 443, "ws": 80, "wss": 443}.get(parts.scheme)
    host = parts.hostname or ""
    port = parts.port
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    if port is None or port == default_port:
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
    if origin == "null":
        return False
    candidate = _normalise(origin)
    if host_header and candidate == _normalise(f"{scheme}://{host_header}"):
        return True
    return candidate in {_normalise(a) for a in allowed}
