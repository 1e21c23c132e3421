"""One subscriber of the event bus: a replay cursor, then a bounded live buffer.

A `Subscription` is an async iterator of `Event`. It first replays the events with
``since < seq <= until`` (``until`` is the bus's last seq at the moment of subscribing), page by
page from the bus's ring or journal, then delivers the live events the bus pushed into its
buffer since that same moment. Registration and the choice of ``until`` happen in one
synchronous step of the event loop, so replay and live meet without a gap or a duplicate.

Invariants:

- the live buffer never holds more than ``capacity`` events: `push` (called by the publisher,
  never awaiting) drops the oldest instead;
- dropped events form one contiguous range ``[first_missed, buffer[0].seq - 1]`` until the
  subscriber next reads, when it receives one ``bus.lagged {dropped, resume_from}`` notice
  before any later event. Its envelope seq is ``resume_from - 1``, the last seq delivered in
  order, so a client that resumes from "the last seq I saw" gets exactly the missed range back.
- numbers the replay has no event for (older than retention, lost in a crash, on a damaged
  page) are announced in their place by ``bus.gap {from_seq, to_seq, reason}`` markers, one per
  reason, with envelope seq ``to_seq``: they cannot be fetched again, so resuming from the
  marker's seq goes on after them. A ``since`` beyond the bus's last number (from a journal
  that was lost or replaced) gets one ``ahead`` marker first, with the bus's last number as
  its envelope seq. No number is skipped unannounced.
- one task reads a subscription; the bus pushes from the event loop's thread only.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel

from supervisor.bus.events import BusGap, BusLagged, Event, GapReason

__all__ = ["Describe", "Fetch", "Subscription"]

# Reads up to `limit` events with first <= seq <= until, oldest first (a damaged range may come
# as a `BusGap` event in its place).
Fetch = Callable[[int, int, int], Awaitable[list[Event]]]
# Why the numbers first..last have no event: (from_seq, to_seq, reason) parts, in order.
Describe = Callable[[int, int], list[tuple[int, int, GapReason]]]

# A reader that always finds events ready still yields to the event loop this often.
_YIELD_EVERY = 64


class Subscription:
    """Async iterator of the events of one subscriber. Create it with `EventBus.subscribe`."""

    def __init__(
        self,
        *,
        capacity: int,
        since: int | None,
        until: int,
        fetch: Fetch,
        clock: Callable[[], float],
        page_size: int = 500,
        describe: Describe | None = None,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"a subscriber buffer holds at least one event, not {capacity}")
        self.capacity = capacity
        self._buffer: deque[Event] = deque()
        self._dropped = 0
        self._first_missed = 0
        self.dropped_total = 0
        self._waiter: anyio.Event | None = None
        self._closed = False
        # Replay cursor: the next seq to replay, and the last seq replay covers.
        self._cursor = (since + 1) if since is not None else until + 1
        self._until = until
        self._replay: deque[Event] = deque()
        self._fetch = fetch
        self._describe = describe
        self._clock = clock
        self._page_size = page_size
        self._since_yield = 0
        if since is not None and since > until:
            # The client numbers from another journal: tell it, before anything else, which of
            # its numbers this bus will give to new events.
            ahead = BusGap(from_seq=until + 1, to_seq=since, reason=GapReason.AHEAD)
            self._replay.append(Event(seq=until, ts=clock(), data=ahead))

    @property
    def buffered(self) -> int:
        """Live events waiting in the buffer (never more than ``capacity``)."""
        return len(self._buffer)

    @property
    def replaying(self) -> bool:
        return bool(self._replay) or self._cursor <= self._until

    @property
    def closed(self) -> bool:
        return self._closed

    def push(self, event: Event) -> None:
        """Add one live event; drop the oldest when full. Called by the bus; never blocks."""
        buffer = self._buffer
        if len(buffer) >= self.capacity:
            lost = buffer.popleft()
            if self._dropped == 0:
                self._first_missed = lost.seq
            self._dropped += 1
            self.dropped_total += 1
        buffer.append(event)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.set()

    def close(self) -> None:
        """No more live events: iteration ends once the buffer is drained (at once when the
        replay is unfinished)."""
        self._closed = True
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            waiter.set()

    def _notice(self, dropped: int, resume_from: int) -> Event:
        return Event(
            seq=resume_from - 1,
            ts=self._clock(),
            data=BusLagged(dropped=dropped, resume_from=resume_from),
        )

    def _gap(self, first: int, last: int) -> None:
        parts = (
            self._describe(first, last)
            if self._describe is not None
            else [(first, last, GapReason.MISSING)]
        )
        now = self._clock()
        for low, high, reason in parts:
            marker = BusGap(from_seq=low, to_seq=high, reason=reason)
            self._replay.append(Event(seq=high, ts=now, data=marker))

    async def _fill_replay(self) -> None:
        cursor, until = self._cursor, self._until
        page = await self._fetch(cursor, until, self._page_size)
        if not page:
            # Nothing left up to `until`: the rest of the range has no events.
            self._gap(cursor, until)
            self._cursor = until + 1
            return
        expected = cursor
        for event in page:
            data = event.data
            first, last = (
                (data.from_seq, data.to_seq) if isinstance(data, BusGap) else (event.seq, event.seq)
            )
            if first > expected:
                self._gap(expected, first - 1)
            self._replay.append(event)
            expected = last + 1
        self._cursor = expected

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        self._since_yield += 1
        if self._since_yield >= _YIELD_EVERY:
            self._since_yield = 0
            await anyio.lowlevel.checkpoint()
        while True:
            if self._replay:
                return self._replay.popleft()
            if self._cursor <= self._until:
                if self._closed:
                    # The journal may be gone; delivering live events after an unfinished
                    # replay would leave an unannounced gap, so the subscription ends here.
                    raise StopAsyncIteration
                await self._fill_replay()
                continue
            if self._dropped:
                notice = self._notice(self._dropped, self._first_missed)
                self._dropped = 0
                return notice
            if self._buffer:
                return self._buffer.popleft()
            if self._closed:
                raise StopAsyncIteration
            waiter = anyio.Event()
            self._waiter = waiter
            await waiter.wait()
