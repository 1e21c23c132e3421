"""Event numbers are never reused: durable reservations, gaps after a crash, announced in replay.

A "crash" in the unit tests closes the journal's handles without flushing or releasing the
reservation, which is what ``kill -9`` leaves on disk; the last test does it for real.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from websockets.sync.client import connect

from supervisor.bus import (
    BusGap,
    Event,
    EventBus,
    GapReason,
    JobProgress,
    Journal,
    Subscription,
)
from supervisor.bus.reservation import ReservationFile
from supervisor.core.stages import Stage
from tests.server_process import free_port, running_server


def _progress(step: int) -> JobProgress:
    return JobProgress(job_id="j", stage=Stage.DENOISE, step=step, elapsed_s=0.0)


def _crash(journal: Journal) -> None:
    """Leave the files as a killed process would: no flush, no release of the reservation."""
    journal._conn.close()
    assert journal._seqfile is not None
    journal._seqfile.close()


def _seqfile(path: Path) -> int | None:
    reader = ReservationFile(path.with_name(path.name + ".seq"))
    try:
        return reader.value
    finally:
        reader.close()


async def _take(subscription: Subscription, count: int) -> list[Event]:
    taken: list[Event] = []
    with anyio.fail_after(10):
        async for event in subscription:
            taken.append(event)
            if len(taken) == count:
                break
    return taken


def test_a_number_is_used_only_once_its_reservation_is_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    bus = EventBus(Journal(path), reserve_block=8)
    for n in range(40):
        event = bus.publish(_progress(n))
        durable = _seqfile(path)
        assert durable is not None
        assert event.seq <= durable == bus.stats.reserved_through
    # No reserver is running here: publish reserved inline, doubling the block each time (it
    # fell behind), so 40 numbers took 2 fsync'd reservations (through 16, then 48), not 5.
    assert bus.stats.reserved_through == 16 + 32
    bus.journal.close()


def test_a_crash_leaves_a_gap_and_numbering_resumes_after_the_reservation(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    bus = EventBus(Journal(path), reserve_block=100)
    for n in range(6):
        bus.publish(_progress(n))
    bus.journal.flush()
    seen_live = [bus.publish(_progress(n)) for n in range(6, 10)]  # never flushed
    reserved = bus.stats.reserved_through
    assert reserved >= 10
    _crash(bus.journal)

    journal = Journal(path)
    assert journal.count() == 6
    assert journal.last_seq == reserved
    assert journal.gaps == ((7, reserved, GapReason.RESTART),)
    again = EventBus(journal)
    assert again.stats.resumed_after == reserved
    assert again.epoch != bus.epoch
    first = again.publish(_progress(99))
    # The numbers the dead run handed out (7..10, seen live) are never given to new events.
    assert first.seq == reserved + 1
    assert first.seq not in {e.seq for e in seen_live}
    assert journal.describe_gap(8, reserved) == [(8, reserved, GapReason.RESTART)]
    journal.close()


def test_two_crashes_in_a_row_record_both_reservations_as_gaps(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    bus = EventBus(Journal(path), reserve_block=10)
    bus.publish(_progress(0))
    bus.journal.flush()
    first_reservation = bus.stats.reserved_through
    _crash(bus.journal)
    again = EventBus(Journal(path), reserve_block=10)
    again.publish(_progress(1))  # handed out, never journaled
    second_reservation = again.stats.reserved_through
    _crash(again.journal)
    journal = Journal(path)
    assert journal.gaps == (
        (2, first_reservation, GapReason.RESTART),
        (first_reservation + 1, second_reservation, GapReason.RESTART),
    )
    assert journal.describe_gap(2, second_reservation) == list(journal.gaps)
    assert journal.last_seq == second_reservation
    journal.close()


def test_a_clean_close_releases_the_reservation(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    bus = EventBus(Journal(path), reserve_block=100)
    for n in range(10):
        bus.publish(_progress(n))
    assert bus.stats.reserved_through > 10
    bus.journal.close()
    assert _seqfile(path) == 10
    reopened = Journal(path)
    assert (reopened.last_seq, reopened.reserved_through, reopened.gaps) == (10, 10, ())
    assert EventBus(reopened).publish(_progress(10)).seq == 11
    reopened.close()


def test_the_reservation_file_survives_a_torn_write(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3.seq"
    writer = ReservationFile(path)
    assert writer.value is None
    for value in (1000, 2000, 3000):
        writer.write(value)
    writer.close()
    # Generation 3 went to slot 1 (at byte 512): tear it; slot 0 still says 2000.
    with open(path, "r+b") as f:
        f.seek(512 + 10)
        f.write(b"\xff\xff")
    assert _seqfile(tmp_path / "events.sqlite3") == 2000
    path.write_bytes(os.urandom(1024))
    assert _seqfile(tmp_path / "events.sqlite3") is None


def test_journal_without_its_reservation_file_falls_back_to_the_meta_row(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    bus = EventBus(Journal(path), reserve_block=50)
    for n in range(5):
        bus.publish(_progress(n))
    bus.journal.flush()  # copies the reservation into the meta row
    reserved = bus.stats.reserved_through
    _crash(bus.journal)
    path.with_name(path.name + ".seq").unlink()
    reopened = Journal(path)
    assert reopened.last_seq == reserved
    reopened.close()


@pytest.mark.anyio
async def test_the_running_reserver_keeps_the_reservation_ahead(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    journal = Journal(path)
    inline: list[int] = []
    reserve = journal.reserve
    loop_thread = threading.get_ident()

    def counting(through: int) -> int:
        if threading.get_ident() == loop_thread:
            inline.append(through)
        return reserve(through)

    journal.reserve = counting  # type: ignore[method-assign]
    async with EventBus(journal, reserve_block=1000) as bus:
        for n in range(20_000):
            event = bus.publish(_progress(n))
            assert event.seq <= bus.stats.reserved_through
            if n % 128 == 127:
                await anyio.lowlevel.checkpoint()
        durable = _seqfile(path)
        assert durable is not None
        assert durable >= bus.last_seq
    # The reserver works in a thread; publishing reserves inline only while the block grows
    # to the rate (a few times), not once per 1,000 events (20 times).
    assert len(inline) < 10


@pytest.mark.anyio
async def test_resuming_inside_the_gap_announces_it(tmp_path: Path) -> None:
    path = tmp_path / "events.sqlite3"
    bus = EventBus(Journal(path), reserve_block=100)
    for n in range(6):
        bus.publish(_progress(n))
    bus.journal.flush()
    for n in range(6, 10):
        bus.publish(_progress(n))
    reserved = bus.stats.reserved_through
    _crash(bus.journal)

    async with EventBus(Journal(path), ring=4) as again:
        new = [again.publish(_progress(100 + n)) for n in range(3)]
        # A client that saw seq 9 live before the crash resumes from it.
        async with again.subscribe(since=9) as subscription:
            marker, *rest = await _take(subscription, 4)
        assert isinstance(marker.data, BusGap)
        assert (marker.data.from_seq, marker.data.to_seq) == (10, reserved)
        assert marker.data.reason is GapReason.RESTART
        assert marker.seq == reserved
        assert rest == new
        # From the start: the 6 journaled events, the gap, the new ones: every number accounted.
        async with again.subscribe(since=0) as subscription:
            events = await _take(subscription, 10)
        assert [e.seq for e in events] == [1, 2, 3, 4, 5, 6, reserved, *[e.seq for e in new]]
        assert isinstance(events[6].data, BusGap)
        assert events[6].data.from_seq == 7


@pytest.mark.anyio
async def test_a_since_beyond_the_last_number_is_announced_as_ahead() -> None:
    async with EventBus() as bus:
        for n in range(3):
            bus.publish(_progress(n))
        async with bus.subscribe(since=50) as subscription:
            bus.publish(_progress(3))
            marker, live = await _take(subscription, 2)
    assert isinstance(marker.data, BusGap)
    assert (marker.data.from_seq, marker.data.to_seq, marker.data.reason) == (
        4,
        50,
        GapReason.AHEAD,
    )
    assert marker.seq == 3
    assert live.seq == 4


def _read(ws_url: str, since: int, until: Any) -> list[dict[str, Any]]:
    """Frames from ``since`` until ``until(frame)`` is true (telemetry keeps the stream busy)."""
    frames: list[dict[str, Any]] = []
    with connect(f"{ws_url}/v1/events?since={since}", open_timeout=10) as ws:
        while not frames or not until(frames[-1]):
            frames.append(json.loads(ws.recv(timeout=30)))
    return frames


@pytest.mark.slow
def test_kill_9_then_restart_never_reuses_a_number(tmp_path: Path) -> None:
    """A real server: read events live, kill -9 it, restart on the same home, resume from the
    last seq seen: no seq ever names two different events, and the gap is announced."""
    port = free_port()

    def ready(frame: dict[str, Any]) -> bool:
        return frame["type"] == "supervisor.transition" and frame["data"]["to"] == "ready"

    with running_server(tmp_path, port=port) as first:
        before = _read(first.ws_url, 0, ready)
        last = before[-1]["seq"]
        # A few more live events (telemetry), then the kill with them maybe unflushed.
        before += _read(first.ws_url, last, lambda f: f["seq"] >= last + 3)
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(timeout=10)
    last_seen = before[-1]["seq"]
    by_seq = {f["seq"]: f for f in before}
    assert len(by_seq) == len(before)

    with running_server(tmp_path, port=port) as second:
        resumed = _read(second.ws_url, last_seen, ready)
        replayed = _read(second.ws_url, 0, lambda f: f["seq"] >= resumed[-1]["seq"])
        second.terminate()
    # Events the first life journaled after the last one read may come first; then the gap.
    gaps = [f for f in resumed if f["type"] == "bus.gap"]
    assert len(gaps) == 1
    gap = gaps[0]
    assert gap["data"]["reason"] == "restart"
    assert gap["seq"] == gap["data"]["to_seq"] > gap["data"]["from_seq"] > last_seen
    new_events = resumed[resumed.index(gap) + 1 :]
    assert any(f["type"] == "supervisor.transition" for f in new_events)
    assert all(f["seq"] > gap["data"]["to_seq"] for f in new_events)
    _assert_every_number_accounted(resumed, after=last_seen)
    # Every event of the journal replayed in the second life that the first life showed under
    # the same number is the very same event.
    for frame in replayed:
        if frame["type"].startswith("bus."):
            continue
        if frame["seq"] in by_seq:
            assert frame == by_seq[frame["seq"]]
        else:
            assert frame["seq"] > gap["data"]["to_seq"]
    _assert_every_number_accounted(replayed, after=0)


def _assert_every_number_accounted(frames: list[dict[str, Any]], *, after: int) -> None:
    """Events and gap markers, in order, cover every number after ``after`` exactly once."""
    covered = after
    for frame in frames:
        first_number = frame["data"]["from_seq"] if frame["type"] == "bus.gap" else frame["seq"]
        assert first_number == covered + 1, frame
        covered = frame["seq"]
