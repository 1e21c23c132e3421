"""The actor base: one bounded mailbox, one loop, `tell` and `ask`.

An actor is an anyio task. Everything it owns is touched only from its own loop (and from the
background tasks it spawns in its own task group); others reach it through messages alone.
A message whose handler raises crashes the actor, as in OTP: the exception leaves `run()` and the
supervisor decides what happens next. An `ask` pending at that moment gets `ActorCrashedError`.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskGroup, TaskStatus
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from supervisor.core.exceptions import (
    ActorCrashedError,
    ActorNotRunning,
    AskTimeout,
    MailboxFull,
)
from supervisor.core.structured_logging import current_actor

__all__ = ["Actor", "ActorStatus"]

R = TypeVar("R")
log = logging.getLogger("genvisor.actor")


class ActorStatus(StrEnum):
    CREATED = "created"
    IDLE = "idle"
    BUSY = "busy"
    STOPPING = "stopping"
    STOPPED = "stopped"
    CRASHED = "crashed"


class _Reply:
    """The slot an `ask` waits on. Set exactly once, by the actor's loop."""

    __slots__ = ("done", "error", "value")

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.value: object = None
        self.error: BaseException | None = None


@dataclass(slots=True)
class _Envelope:
    message: object
    reply: _Reply | None = field(default=None)


class Actor(ABC):
    """Subclasses implement `handle`; they may override `on_start`, `on_stop` and `describe`."""

    # Exceptions that answer an `ask` instead of crashing the actor (a refused request is not a
    # fault of the actor). Raised while handling a `tell`, they still crash it.
    reply_errors: tuple[type[Exception], ...] = ()

    def __init__(self, name: str, *, mailbox_size: int = 64) -> None:
        self.name = name
        self.mailbox_size = mailbox_size
        self.status = ActorStatus.CREATED
        self._send: MemoryObjectSendStream[_Envelope]
        self._receive: MemoryObjectReceiveStream[_Envelope]
        self._send, self._receive = anyio.create_memory_object_stream[_Envelope](mailbox_size)
        self._task_group: TaskGroup | None = None
        self._pending: _Reply | None = None
        self._exited: anyio.Event | None = None

    # -- to override -------------------------------------------------------------------------

    @abstractmethod
    async def handle(self, message: object) -> object:
        """Handle one message; the return value is the reply to an `ask`."""

    async def on_start(self) -> None:  # noqa: B027 - an optional hook, empty by design
        """Runs before the first message; an exception here is a failed start."""

    async def on_stop(self) -> None:  # noqa: B027 - an optional hook, empty by design
        """Runs after the mailbox is closed and drained, before background tasks are cancelled."""

    async def cleanup(self) -> None:  # noqa: B027 - an optional hook, empty by design
        """Runs last, after a stop, a crash or a cancellation: release what must not leak
        (processes, sockets). Shielded from cancellation."""

    def describe(self) -> dict[str, Any]:
        """Facts for the state dump (status, pid where there is one, ...)."""
        return {"status": self.status.value}

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.status in (ActorStatus.IDLE, ActorStatus.BUSY)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run until `stop()` drains the mailbox; raise if a handler or background task fails."""
        if self._exited is None:
            self._exited = anyio.Event()
        # Each actor runs in its own task (own context): its log records carry its name.
        current_actor.set(self.name)
        try:
            async with anyio.create_task_group() as tg:
                self._task_group = tg
                await self.on_start()
                self.status = ActorStatus.IDLE
                task_status.started()
                await self._loop()
                self.status = ActorStatus.STOPPING
                await self.on_stop()
                tg.cancel_scope.cancel()
        except BaseException as exc:
            self.status = ActorStatus.CRASHED
            self._fail_pending(exc)
            raise
        finally:
            self._task_group = None
            self._receive.close()
            self._send.close()
            with anyio.CancelScope(shield=True):
                await self.cleanup()
            self._exited.set()
        self.status = ActorStatus.STOPPED

    async def finished(self) -> None:
        """Wait until `run()` has returned or raised."""
        if self._exited is None:
            self._exited = anyio.Event()
        await self._exited.wait()

    def stop(self) -> None:
        """Ask for a clean stop: messages already queued are handled, then the loop ends."""
        self._send.close()

    def spawn(
        self, fn: Callable[[], Coroutine[Any, Any, object]], *, name: str | None = None
    ) -> None:
        """Run a background task in this actor's task group; if it raises, the actor crashes."""
        if self._task_group is None:
            raise ActorNotRunning(actor=self.name)
        self._task_group.start_soon(fn, name=name or f"{self.name}.background")

    async def _loop(self) -> None:
        async with self._receive:
            async for envelope in self._receive:
                self._pending = envelope.reply
                self.status = ActorStatus.BUSY
                try:
                    result = await self.handle(envelope.message)
                except self.reply_errors as exc:
                    if envelope.reply is None:
                        raise
                    envelope.reply.error = exc
                else:
                    if envelope.reply is not None:
                        envelope.reply.value = result
                self.status = ActorStatus.IDLE
                self._pending = None
                if envelope.reply is not None:
                    envelope.reply.done.set()

    def _fail_pending(self, exc: BaseException) -> None:
        reply, self._pending = self._pending, None
        if reply is not None and not reply.done.is_set():
            reply.error = ActorCrashedError(actor=self.name, cause=exc)
            reply.done.set()
        # Invariant: after a crash nobody waits forever on an ask still in the mailbox.
        while True:
            try:
                envelope = self._receive.receive_nowait()
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                break
            if envelope.reply is not None:
                envelope.reply.error = ActorCrashedError(actor=self.name, cause=exc)
                envelope.reply.done.set()

    # -- messaging ---------------------------------------------------------------------------

    def tell_nowait(self, message: object) -> None:
        """Fire and forget; raise MailboxFull rather than wait."""
        try:
            self._send.send_nowait(_Envelope(message))
        except anyio.WouldBlock:
            raise MailboxFull(actor=self.name, capacity=self.mailbox_size) from None
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise ActorNotRunning(actor=self.name) from None

    async def tell(self, message: object) -> None:
        """Fire and forget; waits for room in the mailbox (back-pressure)."""
        try:
            await self._send.send(_Envelope(message))
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise ActorNotRunning(actor=self.name) from None

    # The timeout is part of the message contract (OTP's call timeout), not a caller's deadline.
    async def ask(
        self,
        message: object,
        reply_type: type[R],
        *,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> R:
        """Send `message` and wait for the reply, which must be a `reply_type`."""
        reply = _Reply()
        try:
            with anyio.fail_after(timeout if math.isfinite(timeout) else None):
                await self._send.send(_Envelope(message, reply))
                await reply.done.wait()
        except TimeoutError:
            raise AskTimeout(actor=self.name, timeout=timeout) from None
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            raise ActorNotRunning(actor=self.name) from None
        if reply.error is not None:
            raise reply.error
        if not isinstance(reply.value, reply_type):
            raise TypeError(
                f"actor {self.name!r} replied {type(reply.value).__name__} to "
                f"{type(message).__name__}, expected {reply_type.__name__}"
            )
        return reply.value
