"""A damaged journal heals: checked at open, moved aside (never deleted), what can be read is
carried into a fresh file, the lost ranges become announced gaps; a damaged page met at run
time is answered with a gap marker, not an error."""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from supervisor.bus import BusGap, Event, EventBus, GapReason, JobProgress, Journal
from supervisor.core.stages import Stage
from supervisor.core.store_health import StoreHealReport

TOTAL = 3000


def _event(n: int) -> Event:
    # Bodies of varied length, so rows do not line up with page boundaries.
    data = JobProgress(
        job_id=f"job-{n}-" + "x" * (n % 37), stage=Stage.DENOISE, step=n, elapsed_s=0.5
    )
    return Event(seq=n, ts=1_700_000_000.0 + n, data=data)


ORIGINAL = {n: _event(n) for n in range(1, TOTAL + 1)}


def _journal_file(home: Path) -> Path:
    path = home / "events.sqlite3"
    journal = Journal(path)
    for first in range(1, TOTAL + 1, 500):
        journal.append_many([ORIGINAL[n] for n in range(first, first + 500)])
        journal.flush()
    journal.reserve(TOTAL + 1000)  # the run's reservation, beyond the last event
    journal.close()  # a clean stop (releases the reservation down to TOTAL)
    return path


def _truncate_half(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


def _garbage_at(fraction: float) -> Callable[[Path], None]:
    def damage(path: Path) -> None:
        with open(path, "r+b") as f:
            f.seek(int(path.stat().st_size * fraction))
            f.write(bytes(range(256)) * 48)  # 12 KiB: three pages

    return damage


def _garbage_header(path: Path) -> None:
    with open(path, "r+b") as f:
        f.write(b"not a database at all!" * 4)


DAMAGES = {
    "truncated to half": _truncate_half,
    "garbage at 50%": _garbage_at(0.5),
    "garbage at 80%": _garbage_at(0.8),
    "garbage header": _garbage_header,
}


@pytest.mark.parametrize("damage", DAMAGES.values(), ids=list(DAMAGES))
def test_a_damaged_journal_is_moved_aside_and_what_can_be_read_is_kept(
    tmp_path: Path, damage: Callable[[Path], None]
) -> None:
    path = _journal_file(tmp_path)
    damage(path)
    damaged_bytes = path.read_bytes()

    journal = Journal(path)
    report = journal.heal_report
    assert isinstance(report, StoreHealReport)
    # Never deleted: moved aside, byte for byte, under a timestamped name.
    assert re.fullmatch(r"events\.sqlite3\.damaged-\d{8}T\d{6}(-\d+)?", report.moved_to.name)
    assert report.moved_to.read_bytes() == damaged_bytes
    assert report.path == path
    assert report.store == "events"
    # Every event carried over is the original, and the count adds up.
    kept = journal.read(0, limit=TOTAL)
    assert kept == [ORIGINAL[e.seq] for e in kept]
    assert report.recovered == len(kept) == journal.count()
    assert report.recovered > TOTAL // 3  # leaves survive even where the tree above is gone
    assert report.lost == TOTAL - report.recovered
    assert str(report.recovered) in report.reason()
    # The lost numbers are recorded as damaged gaps; with the kept rows they cover 1..TOTAL.
    covered = {e.seq for e in kept}
    for low, high, reason in journal.gaps:
        assert reason is GapReason.DAMAGED
        covered |= set(range(low, high + 1))
    assert covered == set(range(1, TOTAL + 1))
    # Numbering goes on after every number the damaged file had used.
    assert journal.last_seq == TOTAL
    assert EventBus(journal).publish(ORIGINAL[1].data).seq == TOTAL + 1
    journal.close()
    # The fresh file is healthy: the next open does not heal again.
    reopened = Journal(path)
    assert reopened.heal_report is None
    assert reopened.count() == report.recovered + 1
    reopened.close()


def test_a_healthy_or_new_journal_is_left_alone(tmp_path: Path) -> None:
    fresh = Journal(tmp_path / "new.sqlite3")
    assert fresh.heal_report is None
    fresh.close()
    path = _journal_file(tmp_path)
    journal = Journal(path)
    assert journal.heal_report is None
    assert journal.count() == TOTAL
    journal.close()
    assert sorted(p.name for p in tmp_path.iterdir() if "damaged" in p.name) == []


def test_an_empty_file_heals_to_an_empty_journal_and_keeps_its_numbering(tmp_path: Path) -> None:
    path = _journal_file(tmp_path)
    path.write_bytes(b"")
    journal = Journal(path)
    assert journal.heal_report is not None
    assert journal.heal_report.recovered == 0
    assert journal.heal_report.moved_to.exists()
    # The reservation lives beside the journal, not in it: numbers are still never reused.
    assert journal.last_seq == TOTAL
    journal.close()


@pytest.mark.anyio
async def test_a_healed_journal_replays_with_its_lost_range_announced(tmp_path: Path) -> None:
    path = _journal_file(tmp_path)
    _garbage_at(0.5)(path)
    async with EventBus(Journal(path)) as bus:
        assert bus.journal.heal_report is not None
        frames: list[Event] = []
        async with bus.subscribe(since=0) as subscription:
            with anyio.fail_after(10):
                async for event in subscription:
                    frames.append(event)
                    if event.seq >= TOTAL:
                        break
    markers = [e for e in frames if isinstance(e.data, BusGap)]
    assert markers
    assert all(m.data.reason is GapReason.DAMAGED for m in markers if isinstance(m.data, BusGap))
    events = [e for e in frames if not isinstance(e.data, BusGap)]
    assert len(events) == bus.journal.heal_report.recovered
    assert all(e == ORIGINAL[e.seq] for e in events)


class _FlakyJournal(Journal):
    """Reads fail, as SQLite's do on a damaged page, whenever they touch a bad number."""

    bad: set[int] = set()

    def read(self, since: int, limit: int = 1000, *, until: int | None = None) -> list[Event]:
        upper = until if until is not None else self.last_seq
        if any(since < n <= upper for n in self.bad):
            raise sqlite3.DatabaseError("database disk image is malformed")
        return super().read(since, limit, until=until)


def test_read_marked_gives_up_only_the_damaged_numbers() -> None:
    journal = _FlakyJournal()
    journal.bad = {40, 41, 42, 77}
    journal.append_many([ORIGINAL[n] for n in range(1, 101)])
    journal.flush()
    out = journal.read_marked(1, 100, limit=1000)
    markers = [(e.data.from_seq, e.data.to_seq) for e in out if isinstance(e.data, BusGap)]
    assert markers == [(40, 42), (77, 77)]
    assert all(e.seq == e.data.to_seq for e in out if isinstance(e.data, BusGap))
    assert [e.seq for e in out if not isinstance(e.data, BusGap)] == [
        n for n in range(1, 101) if n not in journal.bad
    ]
    assert journal.damaged_reads > 0
    # The limit counts events, as `read` does.
    assert [e.seq for e in journal.read_marked(1, 100, limit=5)] == [1, 2, 3, 4, 5]
    journal.close()


@pytest.mark.anyio
async def test_a_damaged_page_at_run_time_is_a_gap_marker_not_a_dropped_stream() -> None:
    journal = _FlakyJournal()
    journal.bad = {5, 6}
    async with EventBus(journal, ring=4) as bus:
        for n in range(1, 21):
            bus.publish(ORIGINAL[n].data)
        async with bus.subscribe(since=0) as subscription:
            frames: list[Event] = []
            with anyio.fail_after(10):
                async for event in subscription:
                    frames.append(event)
                    if event.seq == 20:
                        break
    gap = frames[4]
    assert isinstance(gap.data, BusGap)
    assert (gap.data.from_seq, gap.data.to_seq, gap.data.reason) == (5, 6, GapReason.DAMAGED)
    assert [e.seq for e in frames] == [1, 2, 3, 4, 6, *range(7, 21)]


@pytest.mark.anyio
async def test_damage_met_at_run_time_in_a_real_file_is_answered_with_markers(
    tmp_path: Path,
) -> None:
    path = _journal_file(tmp_path)
    journal = Journal(path)  # healthy at open; its own connection has not read the rows yet
    assert journal.heal_report is None
    _garbage_at(0.5)(path)
    bus = EventBus(journal)  # not started: nothing is written into the damaged file
    frames: list[Event] = []
    async with bus.subscribe(since=0) as subscription:
        with anyio.fail_after(10):
            async for event in subscription:
                frames.append(event)
                if event.seq >= TOTAL:
                    break
    markers = [e.data for e in frames if isinstance(e.data, BusGap)]
    events = [e for e in frames if not isinstance(e.data, BusGap)]
    assert any(m.reason is GapReason.DAMAGED for m in markers)
    assert journal.damaged_reads > 0
    assert all(e == ORIGINAL[e.seq] for e in events)
    # Events and markers account for every number, in order: nothing skipped unannounced.
    covered = 0
    for e in frames:
        first = e.data.from_seq if isinstance(e.data, BusGap) else e.seq
        assert first == covered + 1
        covered = e.seq
    assert covered == TOTAL
    journal._conn.close()  # no flush, no write into the damaged file
    assert journal._seqfile is not None
    journal._seqfile.close()
