"""Control side: start a worker process and talk to it (no torch here).

    handle = await spawn_worker(WorkerLaunch(device="cpu", log_path=home / "worker.log"))
    await handle.send(Load(model_path=..., options=...))
    msg = await handle.receive()

The channel is one end of a `socketpair` passed to the child with `pass_fds`; the child's
stdout and stderr go to a log file, because libraries print there.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import anyio
from anyio.abc import Process
from pydantic import BaseModel

from actors.worker.channel import AsyncChannel, ChannelClosed
from actors.worker.protocol import Failed, Ready, Shutdown, WorkerMessage
from supervisor.core.exceptions import ProtocolError, WorkerStartFailed

__all__ = [
    "SpawnWorker",
    "WorkerHandle",
    "WorkerLaunch",
    "WorkerLink",
    "log_tail",
    "spawn_worker",
]

_LOG_TAIL_BYTES = 2000


@dataclass(frozen=True, slots=True)
class WorkerLaunch:
    log_path: Path
    device: str = "cpu"
    heartbeat_interval: float = 1.0
    # Setting `device_memory_limit` ("2GiB"); empty for no cap.
    memory_limit: str = ""
    ready_timeout: float = 120.0
    python: str = sys.executable
    env: dict[str, str] = field(default_factory=dict)

    def command(self, fd: int) -> list[str]:
        cmd = [self.python, "-m", "actors.worker", "--channel-fd", str(fd)]
        cmd += ["--device", self.device, "--heartbeat-interval", repr(self.heartbeat_interval)]
        if self.memory_limit:
            cmd += ["--memory-limit", self.memory_limit]
        return cmd

    def process_options(self, fd: int) -> dict[str, Any]:
        """How the worker process is started, its stdout aside (`subprocess.Popen` and
        `anyio.open_process` alike): the channel's end passed, stdin closed, stderr to stdout.

        Invariant: only the control process decides the worker's fate. In its own session, a
        signal sent to the server's process group (Ctrl-C in a terminal, `timeout`, `kill --
        -PGID`) reaches the control process alone, which stops the worker politely; had the
        worker died of it first, the generator would have reported a crash and the supervisor
        scheduled a restart mid-shutdown. A worker whose control process is gone (even `kill
        -9`) still leaves: its channel reaches EOF (see `actors.worker.main`)."""
        return {
            "stdin": subprocess.DEVNULL,
            "stderr": subprocess.STDOUT,
            "pass_fds": (fd,),
            "env": {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"},
            "start_new_session": True,
        }


class WorkerLink(Protocol):
    """What a generator holds of its worker, wherever it runs: a child process here
    (`WorkerHandle`) or a process in a Ray actor on some node (`RayWorkerHandle`)."""

    @property
    def ready(self) -> Ready: ...
    @property
    def log_path(self) -> Path: ...
    @property
    def pid(self) -> int: ...
    @property
    def returncode(self) -> int | None: ...
    @property
    def place(self) -> str:
        """Where the worker runs, for people: empty for a child process of this server."""
        ...

    async def send(self, msg: BaseModel) -> None: ...
    async def receive(self) -> WorkerMessage: ...
    def kill(self) -> None: ...
    def signal(self, signum: signal.Signals) -> None: ...
    async def wait(self) -> int: ...
    async def shutdown(self, grace_s: float = 5.0) -> int: ...
    async def aclose(self) -> None: ...
    def log_tail(self) -> str: ...


# Starts a worker and answers it once it is Ready (`spawn_worker`, or a `RaySpawner`).
SpawnWorker = Callable[[WorkerLaunch], Awaitable[WorkerLink]]


class WorkerHandle:
    """A running worker: its process, its channel and the `Ready` it sent."""

    def __init__(
        self, process: Process, channel: AsyncChannel, ready: Ready, log_path: Path
    ) -> None:
        self.process = process
        self.channel = channel
        self.ready = ready
        self.log_path = log_path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    @property
    def place(self) -> str:
        return ""

    async def send(self, msg: BaseModel) -> None:
        await self.channel.send(msg)

    async def receive(self) -> WorkerMessage:
        """The next message; `ChannelClosed` when the worker is gone."""
        return await self.channel.receive()

    def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()

    def signal(self, signum: signal.Signals) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signum)

    async def wait(self) -> int:
        return await self.process.wait()

    async def shutdown(self, grace_s: float = 5.0) -> int:
        """Ask politely, then kill after `grace_s`; always reaps the process."""
        if self.process.returncode is None:
            try:
                await self.send(Shutdown())
            except (ChannelClosed, OSError, anyio.BrokenResourceError):
                pass
            with anyio.move_on_after(grace_s):
                await self.process.wait()
        await self.aclose()
        return self.process.returncode if self.process.returncode is not None else -9

    async def aclose(self) -> None:
        self.kill()
        with anyio.CancelScope(shield=True):
            await self.process.wait()
            await self.channel.aclose()
            await self.process.aclose()

    def log_tail(self) -> str:
        return log_tail(self.log_path)


def log_tail(path: Path) -> str:
    """The end of a worker's log (empty when it can not be read)."""
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - _LOG_TAIL_BYTES))
            return handle.read().decode(errors="replace")
    except OSError:
        return ""


async def spawn_worker(launch: WorkerLaunch) -> WorkerHandle:
    """Start the worker and wait for its `Ready` (or raise `WorkerStartFailed`)."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    launch.log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with launch.log_path.open("ab") as log:
            process = await anyio.open_process(
                launch.command(child.fileno()), stdout=log, **launch.process_options(child.fileno())
            )
    except BaseException:
        parent.close()
        raise
    finally:
        child.close()
    channel = await AsyncChannel.from_socket(parent, pid=process.pid)
    try:
        ready = await _await_ready(channel, process, launch)
    except BaseException:
        process.kill()
        with anyio.CancelScope(shield=True):
            await process.wait()
            await channel.aclose()
            await process.aclose()
        raise
    return WorkerHandle(process, channel, ready, launch.log_path)


async def _await_ready(channel: AsyncChannel, process: Process, launch: WorkerLaunch) -> Ready:
    try:
        with anyio.fail_after(launch.ready_timeout):
            msg = await channel.receive()
    except TimeoutError:
        raise WorkerStartFailed(
            pid=process.pid, reason=f"no Ready within {launch.ready_timeout:g} s"
        ) from None
    except ChannelClosed:
        code = await process.wait()
        raise WorkerStartFailed(
            pid=process.pid,
            reason=f"exited with code {code} before Ready; log tail: {log_tail(launch.log_path)}",
        ) from None
    if isinstance(msg, Failed):
        raise WorkerStartFailed(pid=process.pid, reason=msg.report.message)
    if not isinstance(msg, Ready):
        raise ProtocolError(pid=process.pid, detail=f"expected ready, got {msg.kind}")
    return msg
