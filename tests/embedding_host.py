"""A small host FastAPI backend with routes and a lifespan of its own, that adds genvisor with
the two documented lines. Run as a script by tests/test_embedding.py:

    python tests/embedding_host.py PORT MARKER_FILE

The host's lifespan writes "started" and, at shutdown, "stopped" to MARKER_FILE, so the test
can see that both lifespans ran in the right nesting.

Served by several worker processes by tests/test_embedding_workers.py, the way hosts are
deployed (each worker imports this module and builds its own `app`):

    uvicorn tests.embedding_host:app --workers 3
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import uvicorn
from fastapi import FastAPI

from supervisor.api.app import compose_lifespans
from supervisor.api.http_api import build_router
from supervisor.core.settings import load_settings
from supervisor.runtime import Runtime


def build_host_app(marker: Path | None) -> FastAPI:
    @asynccontextmanager
    async def host_lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.greeting = "hello from the host"
        path = anyio.Path(marker) if marker is not None else None
        if path is not None:
            await path.write_text("started\n")
        yield
        if path is not None:
            await path.write_text("started\nstopped\n")

    runtime = Runtime(load_settings())
    # The two lines of docs/embedding.md:
    app = FastAPI(lifespan=compose_lifespans(host_lifespan, runtime.lifespan))
    app.include_router(build_router(runtime), prefix="/genvisor")

    @app.get("/hello")
    async def hello() -> dict[str, str]:
        return {"message": app.state.greeting}

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    @app.get("/pid")
    async def pid() -> dict[str, int]:
        return {"pid": os.getpid()}  # the worker process that served this host route

    return app


# What `uvicorn tests.embedding_host:app` serves: construction opens nothing (the lifespan
# elects the process that owns GENVISOR_HOME), so every worker process can import this.
app = build_host_app(None)


if __name__ == "__main__":
    port, marker = int(sys.argv[1]), Path(sys.argv[2])
    uvicorn.run(build_host_app(marker), host="127.0.0.1", port=port, log_level="info")
