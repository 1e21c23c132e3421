"""`genvisor serve`: the runtime standing alone behind uvicorn."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the server (FastAPI + supervisor)")
    p.add_argument("--host", help="bind address (default 127.0.0.1; others need a token)")
    p.add_argument("--port", type=int, help="port (default 8765; 0 picks a free one)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from supervisor.api.app import create_app
    from supervisor.core.settings import load_settings
    from supervisor.core.structured_logging import configure_logging

    overrides: dict[str, Any] = {}
    if args.host is not None:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    settings = load_settings(Path(args.config) if args.config else None, overrides=overrides)
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
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
    return 0 if server.started else 1


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
