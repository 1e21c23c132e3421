"""Fan-out: monotonic seq, bounded subscribers, drop-oldest with bus.lagged, replay then live."""

from __future__ import annotations

import itertools
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from supervisor.bus import (
    BusGap,
    BusLagged,
    Event,
    EventBus,
    EventType,
    GapReason,
    JobProgress,
    Journal,
    Subscription,
)
from supervisor.core.exceptions import BusClosed
from supervisor.core.stages import Stage


def _progress(step: int) -> JobProgress:
    return JobProgress(job_id="j", stage=Stage.DENOISE, step=step, elapsed_s=0.0)


async def _take(subscription: Subscription, count: int) -> list[Event]:
    taken: list[Event] = []
    with anyio.fail_after(10):
        async for event in subscription:
            taken.append(event)
            if len(taken) == count:
                break
    return taken


@pytest.mark.anyio
async def test_seq_is_monotonic_and_ts_comes_from_the_clock() -> None:
    ticks = itertools.count(100)
    async with EventBus(clock=lambda: float(next(ticks))) as bus:
        events = [bus.publish(_progress(n)) for n in range(50)]
    assert [e.seq for e in events] == list(range(1, 51))
    assert [e.ts for e in events] == [float(t) for t in range(100, 150)]
    with pytest.raises(BusClosed):
        bus.publish(_progress(0))


@pytest.mark.anyio
async def test_stalled_subscriber_does_not_delay_a_fast_one() -> None:
    async with EventBus(buffer=16) as bus:
        async with bus.subscribe() as stalled, bus.subscribe() as fast:
            received: list[int] = []
            got_it = anyio.Event()

            async def read_fast() -> None:
                nonlocal got_it
                async for event in fast:
                    received.append(event.seq)
                    got_it.set()

            async with anyio.create_task_group() as tg:
                tg.start_soon(read_fast)
                # Lock-step: each event must reach the fast reader before the next is
                # published. The stalled subscriber's full buffer must never stand in the way.
                for n in range(1, 501):
                    got_it = anyio.Event()
                    bus.publish(_progress(n))
                    with anyio.fail_after(5):
                        await got_it.wait()
                tg.cancel_scope.cancel()
            assert received == list(range(1, 501))
            assert stalled.buffered == 16
            assert stalled.dropped_total == 500 - 16
            assert bus.stats.dropped_total == 500 - 16


@pytest.mark.anyio
async def test_stalled_subscriber_gets_lagged_then_replays_the_missed_range() -> None:
    async with EventBus(Journal(retention=10_000), buffer=32, ring=64) as bus:
        bus.publish(_progress(0))  # seq 1, seen before stalling
        async with bus.subscribe(since=0) as slow:
            first = await _take(slow, 1)
            assert first[0].seq == 1
            for n in range(1, 1001):  # seq 2..1001; the buffer keeps only the newest 32
                bus.publish(_progress(n))
            events = await _take(slow, 33)
        notice, live = events[0], events[1:]
        assert notice.type is EventType.BUS_LAGGED
        assert isinstance(notice.data, BusLagged)
        assert notice.data.resume_from == 2
        assert notice.data.dropped == 1001 - 32 - 1
        assert notice.seq == notice.data.resume_from - 1
        assert [e.seq for e in live] == list(range(1001 - 31, 1002))
        # The missed range is in the journal (older than the ring: read from SQLite).
        missed = await bus.replay(notice.seq, live[0].seq - 1)
        assert [e.seq for e in missed] == list(range(2, live[0].seq))
        assert len(missed) == notice.data.dropped


@pytest.mark.anyio
async def test_memory_stays_bounded_for_a_stalled_subscriber() -> None:
    async with EventBus(buffer=64, ring=256, max_pending=2_000) as bus:
        async with bus.subscribe() as stalled:
            for n in range(12_000):
                bus.publish(_progress(n))
                # Checked after every publish: the bound holds at all times, not only at rest.
                assert stalled.buffered <= 64
                assert bus.journal.pending <= 2_000
                if n % 500 == 0:
                    await anyio.lowlevel.checkpoint()
            assert stalled.buffered == 64
            assert len(bus._ring) == 256
            assert stalled.dropped_total == 12_000 - 64


@pytest.mark.parametrize("ring", [8, 100_000], ids=["from-journal", "from-ring"])
@pytest.mark.anyio
async def test_replay_then_live_has_no_gap_or_duplicate(ring: int) -> None:
    total = 3_000
    async with EventBus(buffer=total, ring=ring, replay_page=50) as bus:
        half_published = anyio.Event()

        async def publish_all() -> None:
            for n in range(total):
                bus.publish(_progress(n))
                if n == total // 2:
                    half_published.set()
                if n % 7 == 0:
                    await anyio.lowlevel.checkpoint()

        async with anyio.create_task_group() as tg:
            tg.start_soon(publish_all)
            await half_published.wait()
            # Subscribe mid-stream, resuming from an early seq, while publishing goes on.
            async with bus.subscribe(since=100) as subscription:
                events = await _take(subscription, total - 100)
        seqs = [e.seq for e in events]
        assert seqs == list(range(101, total + 1))
        assert all(e.type is EventType.JOB_PROGRESS for e in events)


@pytest.mark.anyio
async def test_replay_older_than_retention_is_announced() -> None:
    async with EventBus(Journal(retention=100), ring=10) as bus:
        for n in range(300):
            bus.publish(_progress(n))
        async with bus.subscribe(since=0) as subscription:
            events = await _take(subscription, 101)
        notice = events[0]
        # Pruned numbers cannot be fetched again: a gap (not `bus.lagged`, which invites a
        # replay), positioned at its last number.
        assert isinstance(notice.data, BusGap)
        assert (notice.data.from_seq, notice.data.to_seq) == (1, 200)
        assert notice.data.reason is GapReason.RETENTION
        assert notice.seq == 200
        assert [e.seq for e in events[1:]] == list(range(201, 301))


@pytest.mark.anyio
async def test_since_semantics_and_stats() -> None:
    async with EventBus() as bus:
        for n in range(5):
            bus.publish(_progress(n))
        async with bus.subscribe(since=3) as after_three, bus.subscribe() as live_only:
            assert bus.stats.subscribers == 2
            bus.publish(_progress(5))
            assert [e.seq for e in await _take(after_three, 3)] == [4, 5, 6]
            assert [e.seq for e in await _take(live_only, 1)] == [6]
        assert bus.stats.subscribers == 0
        assert bus.stats.last_seq == 6
        assert [e.seq for e in await bus.replay(2, 4)] == [3, 4]
        with pytest.raises(ValueError, match="since"):
            async with bus.subscribe(since=-1):
                pass


@pytest.mark.anyio
async def test_flusher_commits_batches_and_close_ends_subscriptions(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    journal = Journal(path, retention=1_000)
    bus = EventBus(journal, flush_delay=0.0)
    async with anyio.create_task_group() as tg:
        await tg.start(bus.run)
        async with bus.subscribe() as subscription:
            for n in range(10):
                bus.publish(_progress(n))
            with anyio.fail_after(5):
                while journal.pending:  # the flusher commits from a worker thread
                    await anyio.wait_all_tasks_blocked()
                    await anyio.lowlevel.checkpoint()
            assert journal.count() == 10
            assert bus.stats.journaled == 10
            bus.publish(_progress(10))  # left pending: aclose must flush it
            await bus.aclose()
            # A closed bus ends its subscriptions once their buffers are drained.
            assert [e.seq for e in await _take(subscription, 12)] == list(range(1, 12))
        tg.cancel_scope.cancel()
    reopened = Journal(path)
    assert reopened.count() == 11
    reopened.close()


@pytest.mark.anyio
async def test_close_during_replay_ends_without_a_silent_gap() -> None:
    bus = EventBus(ring=4, replay_page=2)
    for n in range(20):
        bus.publish(_progress(n))
    async with bus.subscribe(since=0) as subscription:
        first = await _take(subscription, 2)
        bus.publish(_progress(20))  # live, after the replay's end
        await bus.aclose()
        rest = [event async for event in subscription]
    # Replay stopped where the journal went away; the live event is not delivered after a gap.
    assert [e.seq for e in first + rest] == [1, 2]
