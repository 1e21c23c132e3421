"""The operator's window: the status page at ``/``, its status JSON and ``/metrics``.

The page is server-rendered HTML plus one script and one stylesheet shipped as package data
(``supervisor/api/static``): no CDN, no build step, nothing fetched beyond this server. It goes
live over the existing event WebSocket (``/v1/events``). Its headers forbid every inline script
and every other origin (`PAGE_CSP`).

Tokens: with ``api_token`` set, the HTML carries no data (the browser sends no header with a
navigation); the script asks for the token once, keeps it in ``sessionStorage`` (the tab only)
and sends it as ``Authorization: Bearer`` on its requests and, for the WebSocket (whose browser
API sets no headers), as a subprotocol ``genvisor.bearer.<base64url token>`` beside
``genvisor.v1``, which the server selects: never in a URL, so never in a log.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from prometheus_client import CONTENT_TYPE_LATEST

from supervisor.api.metrics import Metrics
from supervisor.api.security import bearer_token, token_valid
from supervisor.api.state_view import job_view, state_dump
from supervisor.api.status_render import render_page
from supervisor.core.settings import Settings
from supervisor.errors import ErrorCode, default_catalog
from supervisor.errors.catalog import render
from supervisor.runtime import Runtime

__all__ = [
    "BEARER_PROTOCOL",
    "PAGE_CSP",
    "PROTOCOL",
    "add_status_routes",
    "chosen_subprotocol",
    "last_failure",
    "socket_token_valid",
    "status_data",
]

PROTOCOL = "genvisor.v1"
BEARER_PROTOCOL = "genvisor.bearer."
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
_PAGE_HEADERS = {
    "Content-Security-Policy": PAGE_CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_ASSETS = {"status.js": "text/javascript", "status.css": "text/css"}
RECENT_JOBS = 20
_MAX_SUGGESTIONS = 7


def _subprotocol_token(offered: Sequence[str]) -> str | None:
    for protocol in offered:
        if protocol.startswith(BEARER_PROTOCOL):
            raw = protocol[len(BEARER_PROTOCOL) :]
            try:
                padded = raw + "=" * (-len(raw) % 4)
                return base64.urlsafe_b64decode(padded.encode("ascii")).decode("utf-8")
            except (binascii.Error, UnicodeError, ValueError):
                return None
    return None


def socket_token_valid(
    settings: Settings, headers: Mapping[str, str], offered: Sequence[str]
) -> bool:
    """A WebSocket's token: the Authorization header (CLI, scripts) or, from a browser, the
    ``genvisor.bearer.`` subprotocol. True when no token is configured."""
    if settings.api_token is None:
        return True
    presented = bearer_token(headers)
    if presented is not None and token_valid(settings, presented):
        return True
    from_protocol = _subprotocol_token(offered)
    # Compared in constant time like the header (token_valid); None fails.
    return from_protocol is not None and token_valid(settings, from_protocol)


def chosen_subprotocol(offered: Sequence[str]) -> str | None:
    """The subprotocol the server answers with: ``genvisor.v1`` when offered (a browser that
    offers subprotocols fails a handshake that selects none), never the token's."""
    return PROTOCOL if PROTOCOL in offered else None


def last_failure(dump: dict[str, Any], jobs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The most recent failure: the supervisor's last walk into ``failed`` (explained from the
    message catalog by its code) or a job's own failure (its user-facing error), whichever
    came last."""
    found: list[dict[str, Any]] = []
    walks = [h for h in dump.get("history", []) if h["to_state"] == "failed"]
    if walks:
        last = walks[-1]
        code = last.get("error_code")
        title, suggestions = "The supervisor met a failure", []
        if code in ErrorCode._value2member_map_:
            entry = default_catalog().entry(ErrorCode(code))
            title = render(entry.title, {})
            suggestions = [render(s.text, {}) for s in entry.suggestions]
        found.append(
            {
                "ts": last["ts"],
                "code": code or "",
                "title": title,
                "message": last.get("reason", ""),
                "suggestions": suggestions[:_MAX_SUGGESTIONS],
                "job_id": None,
            }
        )
    for job in jobs:
        error = job.get("error")
        if job.get("status") == "failed" and isinstance(error, dict):
            found.append(
                {
                    "ts": error.get("ts") or job.get("finished_ts") or 0.0,
                    "code": error.get("code", ""),
                    "title": error.get("title", ""),
                    "message": error.get("message", ""),
                    "suggestions": list(error.get("suggestions") or [])[:_MAX_SUGGESTIONS],
                    "job_id": job["id"],
                }
            )
    return max(found, key=lambda f: float(f["ts"] or 0.0)) if found else None


async def status_data(runtime: Runtime, metrics: Metrics) -> dict[str, Any]:
    """Everything the page shows, in one read (it is refreshed when an event says so)."""
    dump = await state_dump(runtime)
    jobs = [await job_view(runtime, j) for j in await runtime.store.list(limit=RECENT_JOBS)]
    return {
        "state": dump,
        "jobs": jobs,
        "last_failure": last_failure(dump, jobs),
        "memory": metrics.memory.recent(),
    }


def _asset(name: str) -> bytes | None:
    if name not in _ASSETS:
        return None
    return resources.files("supervisor.api").joinpath("static", name).read_bytes()


def add_status_routes(router: APIRouter, runtime: Runtime, guarded: list[Any]) -> Metrics:
    """Add ``/``, its assets, ``/v1/status`` and ``/metrics`` to `router`; the metrics feed is
    registered as a runtime companion (`create_app` enters it when the home is not shared)."""
    settings = runtime.settings
    metrics = Metrics(runtime)
    runtime.companions["metrics"] = metrics.companion

    @router.get("/", include_in_schema=False, response_class=HTMLResponse)
    async def status_page(request: Request) -> HTMLResponse:
        """The status page (data included only when no token guards it)."""
        base = request.url.path.rstrip("/")
        required = settings.api_token is not None
        data = None if required else await status_data(runtime, metrics)
        page = render_page(base=base, data=data, token_required=required)
        return HTMLResponse(page, headers=_PAGE_HEADERS)

    @router.get("/status/assets/{name}", include_in_schema=False)
    async def status_asset(name: str) -> Response:
        body = _asset(name)
        if body is None:
            return Response(status_code=404)
        headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
        return Response(body, media_type=_ASSETS[name], headers=headers)

    @router.get("/v1/status", include_in_schema=False, dependencies=guarded)
    async def status_json() -> dict[str, Any]:
        """What the status page shows: the state dump, recent jobs, the last failure and the
        device memory of the last minutes."""
        return await status_data(runtime, metrics)

    @router.get("/metrics", include_in_schema=False, dependencies=guarded)
    async def metrics_text() -> Response:
        """Prometheus text format (see `supervisor.api.metrics`)."""
        return Response(await metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    return metrics
