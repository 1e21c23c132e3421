"""A small host FastAPI backend with routes and a lifespan of its own, that adds genvisor with
the two documented lines. Run as a script by tests/test_embedding.py:

    python tests/embedding_host.py PORT MARKER_FILE

The host's lifespan writes "started" and, at shutdown, "stopped" to MARKER_FILE, so the test
can see that both lifespans ran in the right nesting.
"""

from __future__ import annotations

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


def build_host_app(marker: Path) -> FastAPI:
    @asynccontextmanager
    async def host_lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.greeting = "hello from the host"
        path = anyio.Path(marker)
        await path.write_text("started\n")
        yield
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

    return app


if __name__ == "__main__":
    port, marker = int(sys.argv[1]), Path(sys.argv[2])
    uvicorn.run(build_host_app(marker), host="127.0.0.1", port=port, log_level="info")
