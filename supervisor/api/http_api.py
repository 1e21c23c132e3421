"""The HTTP and WebSocket surface of the runtime, as a router a host app can mount anywhere."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, WebSocket, status
from fastapi.responses import JSONResponse

from supervisor.api.api_errors import ApiError, route_class
from supervisor.api.forwarding import Forwarder, forwarding_route_class
from supervisor.api.inputs_api import add_input_routes
from supervisor.api.jobs_api import add_job_routes
from supervisor.api.models_api import add_model_routes
from supervisor.api.security import TokenGuard, origin_allowed
from supervisor.api.state_view import readiness, state_dump
from supervisor.api.status_page import add_status_routes, chosen_subprotocol, socket_token_valid
from supervisor.bus.websocket_stream import (
    POLICY_VIOLATION,
    close_explaining,
    parse_since,
    stream_events,
)
from supervisor.core.exceptions import InvalidTransition
from supervisor.errors import ErrorCode
from supervisor.runtime import Runtime
from supervisor.supervision.messages import Reset, ResetRefused
from supervisor.supervision.state_machine import State

__all__ = ["build_router"]

_ENVELOPE_BYTES = 64 * 1024


def build_router(runtime: Runtime) -> APIRouter:
    settings = runtime.settings

    # Routes that list `guarded` need the token (when one is set); the route class checks it
    # before the body is read. Open: /healthz and /readyz only.
    guard = TokenGuard(settings)
    guarded = [Depends(guard)]
    # In a follower process of a multi-process host every route but /healthz forwards to the
    # owner (after the token and body checks); the owner serves followers on its socket.
    forwarder = Forwarder(runtime)
    runtime.companions["forwarding"] = forwarder.companion
    router = APIRouter(
        route_class=forwarding_route_class(
            route_class(settings.max_request_bytes, guard), forwarder
        )
    )
    add_job_routes(router, runtime, guarded)
    # Uploads get their own body limit: the image's, plus room for the multipart envelope.
    uploads = APIRouter(
        route_class=forwarding_route_class(
            route_class(settings.max_input_bytes + _ENVELOPE_BYTES, guard), forwarder
        )
    )
    add_input_routes(uploads, runtime, guarded)
    router.include_router(uploads)
    add_model_routes(router, runtime, guarded)
    add_status_routes(router, runtime, guarded)

    @router.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is alive (says nothing about the GPU or the models)."""
        return {"status": "alive"}

    @router.get("/readyz", tags=["health"], response_model=None)
    async def readyz() -> JSONResponse:
        """200 while the service can take and run jobs (ready or degraded, every part working),
        else 503 with each reason it cannot."""
        verdict = readiness(runtime)
        return JSONResponse(verdict, status_code=200 if verdict["ready"] else 503)

    @router.get("/v1/state", tags=["supervisor"], dependencies=guarded)
    async def get_state() -> dict[str, Any]:
        """The state dump: supervisor state, history, children, queue and bus."""
        return await state_dump(runtime)

    @router.post("/v1/supervisor/reset", tags=["supervisor"], dependencies=guarded)
    async def reset(device: str | None = None) -> dict[str, Any]:
        """Bring a halted supervisor back: restart its failed children with fresh budgets.
        With `device` (a `devices` list): bring that device's halted worker back."""
        try:
            new_state = await runtime.supervisor.ask(Reset(device=device), State, timeout=10.0)
        except ResetRefused as exc:
            raise ApiError(
                status.HTTP_409_CONFLICT,
                code=ErrorCode.INPUT_INVALID,
                title="Nothing to reset",
                message=str(exc),
            ) from None
        except InvalidTransition as exc:
            raise ApiError(
                status.HTTP_409_CONFLICT,
                code=ErrorCode.INPUT_INVALID,
                title="Nothing to reset",
                message=f"reset is only possible while halted; the supervisor is {exc.state}",
            ) from None
        return {"state": new_state.value}

    @router.websocket("/v1/events")
    async def events(websocket: WebSocket, since: str | None = None) -> None:
        """Replay events with seq > since from the journal, then stream live events.

        Checked in this order: the Origin, then the token (each refused before accepting: a
        403, and no socket is ever opened for them), then ``since``, parsed here rather than by
        FastAPI, whose refusal would be that same bare 403: a bad one is accepted only to be
        closed with 1008 and a reason the client can print. In a follower process the socket
        is relayed to the owner's, which checks all of this."""
        if forwarder.forwarding:
            await forwarder.relay_websocket(websocket)
            return
        websocket = forwarder.stamped(websocket)
        allowed = origin_allowed(
            websocket.headers.get("origin"),
            host_header=websocket.headers.get("host"),
            scheme="https" if websocket.url.scheme == "wss" else "http",
            allowed=settings.allowed_origins,
        )
        if not allowed:
            await websocket.close(code=POLICY_VIOLATION, reason="origin not allowed")
            return
        # The token: the Authorization header, or from a browser the status page's subprotocol.
        offered = list(websocket.scope.get("subprotocols") or [])
        if not socket_token_valid(settings, websocket.headers, offered):
            await websocket.close(code=POLICY_VIOLATION, reason="a valid API token is required")
            return
        try:
            start = parse_since(since)
        except ValueError as exc:
            await close_explaining(websocket, f"since {exc}")
            return
        await stream_events(websocket, runtime.bus, start, chosen_subprotocol(offered))

    return router
