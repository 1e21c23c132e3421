"""Control side of `executor = "ray"`: a worker in a Ray actor, behind the same handle.

    spawn = RaySpawner(address="10.0.0.5:6379", name_prefix="genvisor-ab12cd")
    handle = await spawn(WorkerLaunch(device="cuda:1", log_path=...))

Each worker is a `WorkerHost` actor (`actors.worker.ray_host`) pinned to one GPU (`num_gpus=1`)
or, for a `cpu:N` device, one CPU, on whichever node has it free. The handle speaks the worker
protocol over TCP to the actor, which relays it to the worker's channel; to the generator it is
a worker like a local one.

Invariant: Ray never restarts or retries on its own (`max_restarts=0`, `max_task_retries=0`):
a killed actor or a lost node is a worker crash, reported through the same path as a local
crash (the stream ends, `wait` returns), and the supervisor decides what follows.

Ray is imported here only when a spawner is first used: the package is an optional extra.
"""

from __future__ import annotations

import secrets
import signal
import threading
from itertools import count
from pathlib import Path
from typing import Any

import anyio
from pydantic import BaseModel

from actors.worker.channel import AsyncChannel, ChannelClosed
from actors.worker.node_models import NodeModels
from actors.worker.protocol import Failed, Ready, Shutdown, WorkerMessage
from actors.worker.ray_host import TOKEN_BYTES, WorkerHost
from actors.worker.spawn import WorkerLaunch, log_tail
from supervisor.core.exceptions import ProtocolError, WorkerStartFailed

__all__ = ["RAY_NAMESPACE", "RaySpawner", "RayWorkerHandle"]

# Actors of every genvisor server live here; each server's names start with its own prefix.
RAY_NAMESPACE = "genvisor"
_CONNECT_TIMEOUT_S = 30.0
_SHOWN = ("CPU", "GPU")
_init_lock = threading.Lock()


class RayWorkerHandle:
    """A worker in a Ray actor: the `WorkerLink` a generator holds."""

    def __init__(
        self,
        actor: Any,
        name: str,
        node: str,
        channel: AsyncChannel,
        ready: Ready,
        log_path: Path,
    ) -> None:
        self.actor = actor
        self.name = name
        self.node = node
        self.channel = channel
        self.ready = ready
        self.log_path = log_path
        self._code: int | None = None
        self._exited = anyio.Event()
        self._waiting = False

    @property
    def pid(self) -> int:
        return self.ready.pid

    @property
    def returncode(self) -> int | None:
        return self._code

    @property
    def place(self) -> str:
        return f"in Ray actor {self.name} on {self.node}"

    async def send(self, msg: BaseModel) -> None:
        await self.channel.send(msg)

    async def receive(self) -> WorkerMessage:
        return await self.channel.receive()

    def kill(self) -> None:
        if self._code is None:
            _kill_actor(self.actor)

    def signal(self, signum: signal.Signals) -> None:
        if self._code is not None:
            return
        if signum == signal.SIGKILL:
            self.kill()
        else:
            self.actor.send_signal.remote(int(signum))

    async def wait(self) -> int:
        """The worker's exit code; -9 when its actor died first (killed, or its node lost)."""
        if self._waiting:
            await self._exited.wait()
        else:
            self._waiting = True
            self._code = await anyio.to_thread.run_sync(
                _wait_exit, self.actor, abandon_on_cancel=True
            )
            self._exited.set()
        assert self._code is not None
        return self._code

    async def shutdown(self, grace_s: float = 5.0) -> int:
        if self._code is None:
            try:
                await self.send(Shutdown())
            except (ChannelClosed, OSError, anyio.BrokenResourceError):
                pass
            with anyio.move_on_after(grace_s):
                await self.wait()
        await self.aclose()
        return self._code if self._code is not None else -9

    async def aclose(self) -> None:
        self.kill()
        if self._code is None:
            self._code = -9
            self._exited.set()
        with anyio.CancelScope(shield=True):
            await self.channel.aclose()

    def log_tail(self) -> str:
        return log_tail(self.log_path)


class RaySpawner:
    """Starts workers as Ray actors; one per server (its names share `name_prefix`)."""

    def __init__(
        self, *, address: str, name_prefix: str, node_models: NodeModels | None = None
    ) -> None:
        self.address = address
        self.name_prefix = name_prefix
        # Set: each node makes the models available in its own cache (ray_model_cache="node").
        self.node_models = node_models
        self._serial = count(1)

    async def __call__(self, launch: WorkerLaunch) -> RayWorkerHandle:
        await anyio.to_thread.run_sync(_connect, self.address)
        # An actor asking for what no node has would wait for ever (Ray keeps it pending): a
        # cluster without the kind of device asked for is refused at once, with what it has.
        totals = await anyio.to_thread.run_sync(_cluster_resources)
        kind = "GPU" if launch.device.startswith("cuda") else "CPU"
        if totals.get(kind, 0.0) < 1:
            have = ", ".join(f"{k} {v:g}" for k, v in sorted(totals.items()) if k in _SHOWN)
            raise WorkerStartFailed(
                pid=None,
                reason=f"the Ray cluster at {self.address or 'this host'} has no {kind} for "
                f"device {launch.device} (it has: {have or 'nothing'})",
            )
        name = f"{self.name_prefix}-{launch.device}-{next(self._serial)}"
        token = secrets.token_bytes(TOKEN_BYTES)
        actor = await anyio.to_thread.run_sync(_create_actor, launch, token, name, self.node_models)
        try:
            with anyio.fail_after(launch.ready_timeout):
                address, port, pid = await anyio.to_thread.run_sync(
                    _endpoint, actor, abandon_on_cancel=True
                )
            with anyio.fail_after(_CONNECT_TIMEOUT_S):
                stream = await anyio.connect_tcp(address, port)
            await stream.send(token)
            channel = AsyncChannel(stream, pid=pid)
            ready = await _await_ready(channel, actor, pid, launch)
        except TimeoutError:
            _kill_actor(actor)
            raise WorkerStartFailed(
                pid=None, reason=f"Ray actor {name} not ready within {launch.ready_timeout:g} s"
            ) from None
        except BaseException:
            _kill_actor(actor)
            raise
        return RayWorkerHandle(actor, name, address, channel, ready, launch.log_path)


async def _await_ready(channel: AsyncChannel, actor: Any, pid: int, launch: WorkerLaunch) -> Ready:
    try:
        with anyio.fail_after(launch.ready_timeout):
            msg = await channel.receive()
    except ChannelClosed:
        tail = await anyio.to_thread.run_sync(_log_tail, actor)
        raise WorkerStartFailed(
            pid=pid, reason=f"exited before Ready in its Ray actor; log tail: {tail}"
        ) from None
    if isinstance(msg, Failed):
        raise WorkerStartFailed(pid=pid, reason=msg.report.message)
    if not isinstance(msg, Ready):
        raise ProtocolError(pid=pid, detail=f"expected ready, got {msg.kind}")
    return msg


# -- blocking Ray calls (each run in a thread: none may block the event loop) -----------------


def _connect(address: str) -> None:
    import ray

    with _init_lock:
        if ray.is_initialized():
            return
        # No address: a private cluster on this host, without the dashboard nobody asked for.
        private: dict[str, Any] = {} if address else {"include_dashboard": False}
        ray.init(
            address=address or None,
            namespace=RAY_NAMESPACE,
            # The workers' own logs go to files under the home; Ray's copies stay in Ray's logs.
            log_to_driver=False,
            configure_logging=False,
            **private,
        )


def _cluster_resources() -> dict[str, float]:
    import ray

    totals = ray.cluster_resources()  # type: ignore[no-untyped-call]
    return {str(k): float(v) for k, v in totals.items()}


def _resources(device: str) -> dict[str, Any]:
    return {"num_gpus": 1, "num_cpus": 1} if device.startswith("cuda") else {"num_cpus": 1}


def _create_actor(
    launch: WorkerLaunch, token: bytes, name: str, node_models: NodeModels | None
) -> Any:
    import ray

    remote_host = ray.remote(WorkerHost)
    return remote_host.options(
        name=name,
        namespace=RAY_NAMESPACE,
        max_restarts=0,
        max_task_retries=0,
        # endpoint, wait_exit, send_signal and log_tail are served while wait_exit blocks.
        max_concurrency=4,
        **_resources(launch.device),
    ).remote(launch, token, node_models)


def _endpoint(actor: Any) -> tuple[str, int, int]:
    import ray

    address, port, pid = ray.get(actor.endpoint.remote())
    return str(address), int(port), int(pid)


def _wait_exit(actor: Any) -> int:
    import ray

    try:
        return int(ray.get(actor.wait_exit.remote()))
    except ray.exceptions.RayActorError:
        return -9


def _log_tail(actor: Any) -> str:
    import ray

    try:
        return str(ray.get(actor.log_tail.remote(), timeout=10))
    except (ray.exceptions.RayError, TimeoutError):
        return ""


def _kill_actor(actor: Any) -> None:
    import ray

    try:
        ray.kill(actor, no_restart=True)
    except (ray.exceptions.RayError, ValueError):
        pass
