"""`genvisor serve`: the runtime standing alone behind uvicorn."""

from __future__ import annotations

import argparse
import errno
import logging
import math
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from types import FrameType
from typing import Any

from supervisor.cli.models_store_cmds import holding_home
from supervisor.core.exceptions import PortInUse
from supervisor.core.home_lock import HomeLock
from supervisor.core.settings import Settings

__all__ = ["EXIT_FATAL", "check_port_free", "register"]

# The runtime could not go on (sysexits' EX_SOFTWARE): a service manager starts it again.
EXIT_FATAL = 70


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the server (FastAPI + supervisor)")
    p.add_argument("--host", help="bind address (default 127.0.0.1; others need a token)")
    p.add_argument("--port", type=int, help="port (default 8765; 0 picks a free one)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from supervisor.core.settings import load_settings, unknown_environment
    from supervisor.core.structured_logging import configure_logging

    overrides: dict[str, Any] = {}
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    settings = load_settings(Path(args.config) if args.config else None, overrides=overrides)
    configure_logging(settings.log_level, settings.log_format)
    for warning in unknown_environment():
        logging.getLogger("genvisor.settings").warning("%s", warning)
    # Who owns the data folder first (a second genvisor there is refused before anything
    # else), then the port; only then are the stores opened (create_app claims the folder).
    probe = HomeLock(settings.home)
    probe.acquire()
    probe.release()
    check_port_free(settings.host, settings.port)
    _default_model_ready(settings)
    # Imported only now: a refused second start answers without loading the web stack.
    import uvicorn

    from supervisor.api.app import create_app

    app = create_app(settings)
    _degrade_if_default_model_cannot_run(app)
    app.state.genvisor.home_lock.describe(url=f"http://{_url_host(settings.host)}:{settings.port}")
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        lifespan="on",
        ws="websockets-sansio",
        timeout_graceful_shutdown=math.ceil(settings.shutdown_timeout),
    )
    server = _GracefulServer(config)
    server.run()
    if app.state.genvisor.fatal is not None:
        return EXIT_FATAL
    return 0 if server.started else 1


def _default_model_ready(settings: Settings) -> None:
    """A fresh home: the default model (tiny-wan) is built before the server starts, so that
    the first job runs. A build that fails leaves the server to start degraded, saying why."""
    from actors.models.model_errors import ModelUnavailable
    from supervisor.runtime.start_up import build_default_model_if_missing

    log = logging.getLogger("genvisor.serve")
    with holding_home(settings.home):
        try:
            built = build_default_model_if_missing(settings)
        except ModelUnavailable as exc:
            log.warning("the default model could not be built: %s", exc)
            return
    if built:
        log.info("%s", built)


def _degrade_if_default_model_cannot_run(app: Any) -> None:
    """Beside the app's lifespan: once serving, a default model that cannot run (its build
    failed, a Hub model never pulled) makes the server degraded, saying why and what fixes it."""
    from contextlib import asynccontextmanager

    import anyio

    from supervisor.runtime.start_up import degrade_if_default_model_cannot_run

    lifespan = app.router.lifespan_context
    runtime = app.state.genvisor

    @asynccontextmanager
    async def with_model_check(a: Any) -> AsyncIterator[None]:
        async with lifespan(a), anyio.create_task_group() as tg:
            tg.start_soon(degrade_if_default_model_cannot_run, runtime)
            yield
            tg.cancel_scope.cancel()

    app.router.lifespan_context = with_model_check


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def check_port_free(host: str, port: int) -> None:
    """Raise `PortInUse` (saying whether a genvisor answers there) when `port` is taken.

    uvicorn would find it only after the lifespan started a worker, and then exit with a raw
    log line; a bind test first costs nothing. Port 0 (any free one) cannot be taken.
    """
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # The same option uvicorn binds with: a port in TIME_WAIT is free for both.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
            return
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
    raise PortInUse(host=host, port=port, genvisor=_genvisor_answers(host, port))


def _genvisor_answers(host: str, port: int) -> bool:
    import httpx

    target = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    try:
        r = httpx.get(f"http://{_url_host(target)}:{port}/healthz", timeout=1.0)
        return r.status_code == 200 and r.json() == {"status": "alive"}
    except (httpx.HTTPError, ValueError):
        return False


def _graceful_server_class() -> type:
    import uvicorn

    class GracefulServer(uvicorn.Server):
        """A SIGTERM/SIGINT that led to a clean shutdown is a normal exit (status 0).

        uvicorn re-raises the captured signal after its shutdown, which makes the process die
        by that signal; for a supervisor a requested, completed shutdown is success.
        """

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            self._captured_signals.clear()

    return GracefulServer


def _GracefulServer(config: Any) -> Any:  # noqa: N802 - a factory that reads like the class
    return _graceful_server_class()(config)
