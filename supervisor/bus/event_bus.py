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
gives live events only. Numbers with no event in a replay are announced (`BusGap`, see
`Subscription`).

Numbering: a number is handed out only when the journal's durable reservation covers it
(``seq <= reserved_through``, fsync'd before). The reservation is raised ``reserve_block``
numbers ahead by a task beside the flusher (in a worker thread, when half the block is used),
so `publish` writes only when that task has fallen behind (or is not running): then it
reserves inline, one fsync per block. The block doubles (up to `_MAX_BLOCK`) each time
publishing used more than a quarter of it while a reservation was being written, so that at
any rate the reserver stays ahead: the cost is a larger gap after a crash, never a reuse.
A new bus continues after the journal's `last_seq`, the reservation of the run before
included: a number is never given twice, even after ``kill -9``; the unused rest of a dead
run's reservation is a gap.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
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

# The largest reservation block: at most this many numbers are skipped after a crash.
_MAX_BLOCK = 65_536


@dataclass(frozen=True, slots=True)
class BusStats:
    subscribers: int
    dropped_total: int
    last_seq: int
    journaled: int
    journal_pending: int
    # Changes at every start of the bus: a client that sees it change knows of a restart.
    epoch: str
    # This run numbers from resumed_after + 1; lower numbers belong to earlier runs.
    resumed_after: int
    reserved_through: int


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
        reserve_block: int = 1000,
    ) -> None:
        if min(buffer, ring, max_pending, replay_page, reserve_block) < 1:
            raise ValueError(
                "buffer, ring, max_pending, replay_page and reserve_block must be positive"
            )
        self.journal = journal if journal is not None else Journal(":memory:")
        self._clock = clock
        self._buffer = buffer
        self._ring: deque[Event] = deque(maxlen=ring)
        self._flush_delay = flush_delay
        self._max_pending = max_pending
        self._replay_page = replay_page
        self._seq = self.journal.last_seq
        self._resumed_after = self._seq
        self.epoch = uuid.uuid4().hex[:16]
        self._block = reserve_block
        self._reserved = 0
        self._refill_at = 0
        self._set_reserved(self.journal.reserved_through)
        self._reserve_wake: anyio.Event | None = None
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
        seq = self._seq + 1
        if seq > self._reserved:
            # The reserver fell behind (or is not running): reserve here, before the number is
            # used. One fsync'd commit; a failure leaves the number unused.
            self._block = min(self._block * 2, max(_MAX_BLOCK, self._block))
            self._set_reserved(self.journal.reserve(seq + self._block - 1))
        elif seq >= self._refill_at and self._reserve_wake is not None:
            self._reserve_wake.set()
        self._seq = seq
        event = Event(seq=seq, ts=self._clock(), data=data)
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

    def _set_reserved(self, reserved: int) -> None:
        if reserved > self._reserved:
            self._reserved = reserved
            self._refill_at = reserved - self._block // 2

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
            describe=self.journal.describe_gap,
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
        with ``since + 1`` to see a gap. A damaged part of the journal comes as a ``bus.gap``
        marker (reason ``damaged``)."""
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
        journal = self.journal
        if journal.pending:
            try:
                await anyio.to_thread.run_sync(journal.flush)
            except sqlite3.DatabaseError:
                pass  # the flusher meets it too and reports it; read what is committed
        return await anyio.to_thread.run_sync(journal.read_marked, first, until, limit)

    # -- state ------------------------------------------------------------------------------

    @property
    def stats(self) -> BusStats:
        return BusStats(
            subscribers=len(self._subscribers),
            dropped_total=self._dropped_by_gone + sum(s.dropped_total for s in self._subscribers),
            last_seq=self._seq,
            # Not `journal.stats()`: that reads the file under the lock a flush holds.
            journaled=self.journal.written,
            journal_pending=self.journal.pending,
            epoch=self.epoch,
            resumed_after=self._resumed_after,
            reserved_through=self._reserved,
        )

    # -- lifecycle --------------------------------------------------------------------------

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """The journal flusher and the reserver. Runs until cancelled; flushes what is pending
        on the way out."""
        self._flush_wake = anyio.Event()
        try:
            async with anyio.create_task_group() as tg:
                # The first block before anything can be published through a running bus.
                await self._reserve_ahead()
                tg.start_soon(self._keep_reserved)
                task_status.started()
                while True:
                    await self._flush_wake.wait()
                    # Gather a batch: one transaction for everything published meanwhile.
                    await anyio.sleep(self._flush_delay)
                    self._flush_wake = anyio.Event()
                    self._flush_requested = False
                    await anyio.to_thread.run_sync(self.journal.flush)
        finally:
            self._flush_wake = None
            self._reserve_wake = None
            with anyio.CancelScope(shield=True):
                if not self._closed:
                    await anyio.to_thread.run_sync(self.journal.flush)

    async def _reserve_ahead(self) -> None:
        if self._closed:
            return  # the journal is closed or closing: nothing more is numbered
        before = self._seq
        reserved = await anyio.to_thread.run_sync(self.journal.reserve, before + self._block)
        if (self._seq - before) * 4 > self._block:
            self._block = min(self._block * 2, max(_MAX_BLOCK, self._block))
        self._set_reserved(reserved)

    async def _keep_reserved(self) -> None:
        # Publishing sets the wake once half the block is used; the next block is made durable
        # here, off the event loop, while the other half is handed out.
        while not self._closed:
            wake = self._reserve_wake = anyio.Event()
            await wake.wait()
            await self._reserve_ahead()

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
