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
  before any later event. A gap in the replay (events already pruned from the journal) is
  announced the same way. No event is lost unannounced.
- a notice's envelope seq is ``resume_from - 1``, the last seq delivered in order, so a client
  that resumes from "the last seq I saw" after a notice gets exactly the missed range back.
- one task reads a subscription; the bus pushes from the event loop's thread only.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable

import anyio
import anyio.lowlevel

from supervisor.bus.events import BusLagged, Event

__all__ = ["Fetch", "Subscription"]

# Reads up to `limit` events with first <= seq <= until, oldest first.
Fetch = Callable[[int, int, int], Awaitable[list[Event]]]

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
        self._clock = clock
        self._page_size = page_size
        self._since_yield = 0

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

    async def _fill_replay(self) -> None:
        cursor, until = self._cursor, self._until
        page = await self._fetch(cursor, until, self._page_size)
        if not page:
            # The whole remaining range is older than what the journal keeps.
            self._replay.append(self._notice(until - cursor + 1, cursor))
            self._cursor = until + 1
            return
        if page[0].seq > cursor:
            self._replay.append(self._notice(page[0].seq - cursor, cursor))
        self._replay.extend(page)
        self._cursor = page[-1].seq + 1

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
