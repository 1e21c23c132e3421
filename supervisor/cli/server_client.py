"""How client commands find and talk to a running server (`--url`, GENVISOR_URL, the token)."""

from __future__ import annotations

import argparse
import os
from typing import Any

import httpx

from supervisor.core.exceptions import ServerUnavailable

__all__ = ["DEFAULT_URL", "add_url_argument", "request_json", "server_url", "token_headers"]

DEFAULT_URL = "http://127.0.0.1:8765"


def add_url_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=None,
        help=f"server address (default: $GENVISOR_URL or {DEFAULT_URL})",
    )


def server_url(args: argparse.Namespace) -> str:
    url: str = getattr(args, "url", None) or os.environ.get("GENVISOR_URL") or DEFAULT_URL
    return url.rstrip("/")


def token_headers() -> dict[str, str]:
    token = os.environ.get("GENVISOR_API_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def request_json(
    args: argparse.Namespace, method: str, path: str, *, timeout: float = 10.0, **kw: Any
) -> tuple[int, Any]:
    """(status, decoded JSON body). A server that does not answer raises ServerUnavailable."""
    url = server_url(args)
    try:
        with httpx.Client(base_url=url, headers=token_headers(), timeout=timeout) as client:
            response = client.request(method, path, **kw)
    except httpx.TransportError as exc:
        raise ServerUnavailable(url=url, reason=type(exc).__name__) from None
    try:
        body = response.json()
    except ValueError:
        body = {"detail": response.text}
    return response.status_code, body
