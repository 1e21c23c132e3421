"""FastAPI application and the two lines a host app needs to embed genvisor.

Stand-alone::

    app = create_app(load_settings())

Embedded in an existing FastAPI backend::

    gv = Runtime(load_settings())
    app = FastAPI(lifespan=compose_lifespans(host_lifespan, gv.lifespan))
    app.include_router(build_router(gv), prefix="/genvisor")

Embedded, the runtime shares its data folder: in a host served by several worker processes
the lifespan elects one owner (the folder's lock) and the others forward genvisor's routes to
it (supervisor.api.forwarding).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException

from supervisor import __version__
from supervisor.api.api_errors import http_exception_handler, unhandled_exception_handler
from supervisor.api.http_api import build_router
from supervisor.api.offline_docs import DOCS_PATHS, add_offline_docs
from supervisor.api.security import DocsTokenGate, TokenGuard, check_exposure
from supervisor.core.settings import Settings
from supervisor.runtime import Runtime

__all__ = ["compose_lifespans", "create_app"]

Lifespan = Callable[[Any], AbstractAsyncContextManager[None]]


def compose_lifespans(*lifespans: Lifespan) -> Lifespan:
    """One lifespan that enters each in order and exits them in reverse."""

    @asynccontextmanager
    async def composed(app: Any) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            for lifespan in lifespans:
                await stack.enter_async_context(lifespan(app))
            yield

    return composed


def create_app(settings: Settings, *, runtime: Runtime | None = None) -> FastAPI:
    check_exposure(settings)
    # Standing alone the server does not share its data folder: the lock is taken here, at
    # once, so a second `genvisor serve` on the same folder is refused before anything starts.
    runtime = runtime or Runtime(settings, share_home=False)
    runtime.claim()
    router = build_router(runtime)
    # The metrics feed follows the bus beside the runtime; a shared home enters it with the
    # runtime's other companions.
    lifespans: list[Lifespan] = [runtime.lifespan]
    if not runtime.share_home:
        lifespans.append(runtime.companions["metrics"])
    app = FastAPI(
        title="genvisor",
        version=__version__,
        summary="Fault-tolerant backend for local text-to-video generation",
        lifespan=compose_lifespans(*lifespans),
        # Served by add_offline_docs from local assets (FastAPI's pages load a CDN).
        docs_url=None,
        redoc_url=None,
    )
    add_offline_docs(app, "genvisor")
    app.state.genvisor = runtime
    app.add_exception_handler(StarletteHTTPException, http_exception_handler)
    # Last resort for anything outside genvisor's routes (their route class catches its own):
    # a UserError body, never Starlette's plain-text 500.
    app.add_exception_handler(Exception, unhandled_exception_handler)
    if settings.api_token is not None:
        paths = frozenset({app.openapi_url or "/openapi.json", *DOCS_PATHS})
        app.add_middleware(DocsTokenGate, guard=TokenGuard(settings), paths=paths)
    app.include_router(router)
    return app
