"""The event bus: numbered, journaled, fanned out to bounded subscribers.

`EventBus.publish` is synchronous and never awaits: it numbers the event (``seq`` + 1), stamps
it with the injected clock, keeps it in a bounded in-memory ring, queues it for the journal
and pushes it into every subscriber's bounded buffer (drop-oldest, see `Subscription`). A
stalled subscriber therefore costs the publisher one deque operation, and costs the other
subscribers nothing.

The journal is written by the flusher (`run`, a task of the owner's task group, or the bus's own
when used as ``async with EventBus(...) as bus``): it commits each batch in a worker thread a
short delay after the first pending event. `aclose` flushes everything and closes the journal.

Replay semantics: ``since`` is exclusive: ``subscribe(since=n)`` and ``replay(n)`` give the
events with ``seq > n``; ``since=0`` gives everything the journal still keeps; ``since=None``
gives live events only. A new bus continues the numbering of the journal it opens.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from itertools import islice
from types import TracebackType

import anyio
import anyio.abc
import anyio.to_thread

from supervisor.bus.events import Event, EventData
from supervisor.bus.journal import Journal
from supervisor.bus.subscription import Subscription
from supervisor.core.exceptions import BusClosed

__all__ = ["BusStats", "EventBus"]


@dataclass(frozen=True, slots=True)
class BusStats:
    subscribers: int
    dropped_total: int
    last_seq: int
    journaled: int
    journal_pending: int


class EventBus:
    """Publish typed events; subscribe with replay. All methods run in one event loop thread."""

    def __init__(
        self,
        journal: Journal | None = None,
        *,
        clock: Callable[[], float] = time.time,
        buffer: int = 1024,
        ring: int = 4096,
        flush_delay: float = 0.02,
        max_pending: int = 50_000,
        replay_page: int = 500,
    ) -> None:
        if buffer < 1 or ring < 1 or max_pending < 1 or replay_page < 1:
            raise ValueError("buffer, ring, max_pending and replay_page must be positive")
        self.journal = journal if journal is not None else Journal(":memory:")
        self._clock = clock
        self._buffer = buffer
        self._ring: deque[Event] = deque(maxlen=ring)
        self._flush_delay = flush_delay
        self._max_pending = max_pending
        self._replay_page = replay_page
        self._seq = self.journal.last_seq
        self._subscribers: list[Subscription] = []
        self._dropped_by_gone = 0
        self._flush_wake: anyio.Event | None = None
        self._flush_requested = False
        self._closed = False
        self._task_group: anyio.abc.TaskGroup | None = None

    # -- publishing -------------------------------------------------------------------------

    def publish(self, data: EventData) -> Event:
        """Number, journal and fan out one event. Never awaits, never waits on a subscriber."""
        if self._closed:
            raise BusClosed(last_seq=self._seq)
        self._seq += 1
        event = Event(seq=self._seq, ts=self._clock(), data=data)
        self._ring.append(event)
        journal = self.journal
        journal.append(event)
        for subscriber in self._subscribers:
            subscriber.push(event)
        if not self._flush_requested and self._flush_wake is not None:
            self._flush_requested = True
            self._flush_wake.set()
        if journal.pending >= self._max_pending:
            # Safety valve: the flusher is not keeping up (or not running). Writing inline
            # blocks this loop briefly but keeps memory bounded; the events are never dropped.
            journal.flush()
        return event

    @property
    def last_seq(self) -> int:
        return self._seq

    @property
    def closed(self) -> bool:
        return self._closed

    # -- subscribing and replay -------------------------------------------------------------

    @asynccontextmanager
    async def subscribe(
        self, since: int | None = None, buffer: int | None = None
    ) -> AsyncIterator[Subscription]:
        """A subscription that replays ``seq > since`` (none when None), then continues live."""
        if since is not None and since < 0:
            raise ValueError(f"since must be >= 0, not {since}")
        if self._closed:
            raise BusClosed(last_seq=self._seq)
        # Registration and `until` in one synchronous step: every later event goes to the live
        # buffer, every earlier one is replayed.
        subscription = Subscription(
            capacity=buffer if buffer is not None else self._buffer,
            since=since,
            until=self._seq,
            fetch=self._fetch,
            clock=self._clock,
            page_size=self._replay_page,
        )
        self._subscribers.append(subscription)
        try:
            yield subscription
        finally:
            self._remove(subscription)

    def _remove(self, subscription: Subscription) -> None:
        if subscription in self._subscribers:
            self._subscribers.remove(subscription)
            self._dropped_by_gone += subscription.dropped_total
        subscription.close()

    async def replay(
        self, since: int, until: int | None = None, *, limit: int = 10_000
    ) -> list[Event]:
        """The kept events with ``since < seq <= until`` (default: the last), oldest first.

        Events already pruned by retention are simply absent: compare the first seq returned
        with ``since + 1`` to see a gap."""
        upper = self._seq if until is None else min(until, self._seq)
        events: list[Event] = []
        cursor = since + 1
        while cursor <= upper and len(events) < limit:
            page = await self._fetch(cursor, upper, min(self._replay_page, limit - len(events)))
            if not page:
                break
            events.extend(page)
            cursor = page[-1].seq + 1
        return events

    async def _fetch(self, first: int, until: int, limit: int) -> list[Event]:
        ring = self._ring
        if ring and ring[0].seq <= first:
            start = first - ring[0].seq
            return list(islice(ring, start, start + min(limit, until - first + 1)))
        if self.journal.pending:
            await anyio.to_thread.run_sync(self.journal.flush)
        return await anyio.to_thread.run_sync(
            lambda: self.journal.read(first - 1, limit, until=until)
        )

    # -- state ------------------------------------------------------------------------------

    @property
    def stats(self) -> BusStats:
        return BusStats(
            subscribers=len(self._subscribers),
            dropped_total=self._dropped_by_gone + sum(s.dropped_total for s in self._subscribers),
            last_seq=self._seq,
            journaled=self.journal.stats().written,
            journal_pending=self.journal.pending,
        )

    # -- lifecycle --------------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """The journal flusher. Runs until cancelled; flushes what is pending on the way out."""
        self._flush_wake = anyio.Event()
        task_status.started()
        try:
            while True:
                await self._flush_wake.wait()
                # Gather a batch: one transaction for everything published meanwhile.
                await anyio.sleep(self._flush_delay)
                self._flush_wake = anyio.Event()
                self._flush_requested = False
                await anyio.to_thread.run_sync(self.journal.flush)
        finally:
            self._flush_wake = None
            with anyio.CancelScope(shield=True):
                if not self._closed:
                    await anyio.to_thread.run_sync(self.journal.flush)

    async def aclose(self) -> None:
        """Stop publishing, end every subscription and flush and close the journal."""
        if self._closed:
            return
        self._closed = True
        for subscription in list(self._subscribers):
            subscription.close()
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(self.journal.close)

    async def __aenter__(self) -> EventBus:
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        await self._task_group.start(self.run)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        task_group, self._task_group = self._task_group, None
        try:
            if task_group is not None:
                task_group.cancel_scope.cancel()
                await task_group.__aexit__(exc_type, exc, tb)
        finally:
            await self.aclose()
        return None
