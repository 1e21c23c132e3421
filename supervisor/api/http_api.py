"""The HTTP and WebSocket surface of the runtime, as a router a host app can mount anywhere."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, WebSocket, status
from fastapi.responses import JSONResponse

from supervisor.api.api_errors import ApiError, route_class
from supervisor.api.jobs_api import add_job_routes
from supervisor.api.models_api import add_model_routes
from supervisor.api.security import bearer_token, origin_allowed, token_valid
from supervisor.bus.websocket_stream import stream_events
from supervisor.core.exceptions import InvalidTransition
from supervisor.errors import ErrorCode
from supervisor.runtime import Runtime
from supervisor.supervision.messages import Reset
from supervisor.supervision.state_machine import State

__all__ = ["build_router"]

SERVING_STATES = frozenset({State.READY, State.DEGRADED})


def build_router(runtime: Runtime) -> APIRouter:
    settings = runtime.settings

    def require_token(request: Request) -> None:
        if not token_valid(settings, bearer_token(request.headers)):
            raise ApiError(
                status.HTTP_401_UNAUTHORIZED,
                code=ErrorCode.CONFIG_INVALID,
                title="A valid API token is required",
                message="send 'Authorization: Bearer <token>' (the server's GENVISOR_API_TOKEN)",
                headers={"WWW-Authenticate": "Bearer"},
            )

    guarded = [Depends(require_token)]
    router = APIRouter(route_class=route_class(settings.max_request_bytes))
    add_job_routes(router, runtime, guarded)
    add_model_routes(router, runtime, guarded)

    @router.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process is alive (says nothing about the GPU or the models)."""
        return {"status": "alive"}

    @router.get("/readyz", tags=["health"], response_model=None)
    async def readyz() -> JSONResponse:
        """200 while the supervisor serves (ready or degraded), else 503."""
        snap = runtime.supervisor.snapshot()
        ok = snap.state in SERVING_STATES
        return JSONResponse(
            {"ready": ok, "state": snap.state.value, "degraded_reasons": snap.degraded_reasons},
            status_code=200 if ok else 503,
        )

    @router.get("/v1/state", tags=["supervisor"], dependencies=guarded)
    async def get_state() -> dict[str, Any]:
        """The state dump: supervisor state, history, children, queue and bus."""
        return runtime.state_dump()

    @router.post("/v1/supervisor/reset", tags=["supervisor"], dependencies=guarded)
    async def reset() -> dict[str, Any]:
        """Bring a halted supervisor back: restart its failed children with fresh budgets."""
        try:
            new_state = await runtime.supervisor.ask(Reset(), State, timeout=10.0)
        except InvalidTransition as exc:
            raise ApiError(
                status.HTTP_409_CONFLICT,
                code=ErrorCode.INPUT_INVALID,
                title="Nothing to reset",
                message=f"reset is only possible while halted; the supervisor is {exc.state}",
            ) from None
        return {"state": new_state.value}

    @router.websocket("/v1/events")
    async def events(
        websocket: WebSocket,
        since: Annotated[int | None, Query(ge=0, le=2**62)] = None,
    ) -> None:
        """Replay events with seq > since from the journal, then stream live events."""
        allowed = origin_allowed(
            websocket.headers.get("origin"),
            host_header=websocket.headers.get("host"),
            scheme="https" if websocket.url.scheme == "wss" else "http",
            allowed=settings.allowed_origins,
        )
        if not allowed:
            await websocket.close(code=1008, reason="origin not allowed")
            return
        if not token_valid(settings, bearer_token(websocket.headers)):
            await websocket.close(code=1008, reason="a valid API token is required")
            return
        await stream_events(websocket, runtime.bus, since)

    return router
