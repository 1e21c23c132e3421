"""A real `genvisor serve` in a subprocess on a free loopback port, for end-to-end tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

GENVISOR = str(Path(sys.executable).with_name("genvisor"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class ServerProcess:
    proc: subprocess.Popen[str]
    port: int
    home: Path
    log_lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def terminate(self, timeout: float = 10.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


def server_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENVISOR_")}
    env.update({"GENVISOR_HOME": str(home), "GENVISOR_LOG_FORMAT": "json", **extra})
    return env


@contextmanager
def uvicorn_process(
    command: list[str],
    *,
    env: dict[str, str],
    cwd: Path | None = None,
    startup_timeout: float = 60.0,
) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """Run an ASGI server process; return once uvicorn says it listens (read from its log, not
    polled). Yields the process and its log lines (still filling); kills it on the way out."""
    proc = subprocess.Popen(
        command,
        env=env,
        cwd=cwd,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    log_lines: list[str] = []
    listening = threading.Event()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            log_lines.append(line)
            if "Uvicorn running on" in line:
                listening.set()
        listening.set()  # the process ended: stop waiting

    threading.Thread(target=pump, daemon=True).start()
    try:
        if not listening.wait(startup_timeout) or proc.poll() is not None:
            raise RuntimeError(f"{command[0]} did not start:\n" + "".join(log_lines[-40:]))
        yield proc, log_lines
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


@contextmanager
def running_server(
    home: Path, *, port: int | None = None, startup_timeout: float = 60.0, **env: str
) -> Iterator[ServerProcess]:
    """`genvisor serve` on a free loopback port over `home`."""
    port = port or free_port()
    command = [GENVISOR, "serve", "--port", str(port)]
    with uvicorn_process(command, env=server_env(home, **env), startup_timeout=startup_timeout) as (
        proc,
        log_lines,
    ):
        yield ServerProcess(proc=proc, port=port, home=home, log_lines=log_lines)


def read_events_until(
    ws_url: str,
    match: Callable[[dict[str, Any]], bool],
    *,
    limit: float = 120.0,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Read a real event stream (replay, then live) until `match(event)`; fail after `limit`
    seconds overall (telemetry keeps the stream busy, so a per-frame timeout is not enough)."""
    deadline = time.monotonic() + limit
    seen = 0
    with connect(ws_url, open_timeout=10, additional_headers=headers) as ws:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching event within {limit:g} s ({seen} read)")
            event: dict[str, Any] = json.loads(ws.recv(timeout=left))
            seen += 1
            if match(event):
                return event
