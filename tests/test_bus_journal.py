"""The SQLite journal: batching, bounded retention, reads, reopening, closing flushes."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from supervisor.bus import Event, EventBus, JobProgress, Journal
from supervisor.core.stages import Stage


def _events(first: int, last: int) -> list[Event]:
    return [
        Event(
            seq=n,
            ts=1000.0 + n,
            data=JobProgress(job_id="j", stage=Stage.DENOISE, step=n, elapsed_s=0.0),
        )
        for n in range(first, last + 1)
    ]


def test_append_is_pending_until_flush(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite3", retention=1000)
    journal.append_many(_events(1, 5))
    assert journal.pending == 5
    assert journal.last_seq == 5
    assert journal.read(0) == []  # nothing committed yet
    assert journal.flush() == 5
    assert journal.pending == 0
    assert [e.seq for e in journal.read(0)] == [1, 2, 3, 4, 5]
    assert [e.seq for e in journal.read(2, limit=2)] == [3, 4]
    assert [e.seq for e in journal.read(1, until=3)] == [2, 3]
    assert journal.read(0)[0] == _events(1, 1)[0]
    journal.close()


def test_retention_keeps_the_newest(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.sqlite3", retention=100)
    for first in range(1, 251, 50):
        journal.append_many(_events(first, first + 49))
        journal.flush()
    assert journal.count() == 100
    assert journal.first_seq() == 151
    assert [e.seq for e in journal.read(0, limit=3)] == [151, 152, 153]
    assert journal.stats().written == 250
    journal.close()


def test_file_uses_wal_and_reopens_with_its_numbering(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "journal.sqlite3"
    journal = Journal(path)
    journal.append_many(_events(1, 3))
    journal.close()  # close flushes
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 3
    reopened = Journal(path)
    assert reopened.last_seq == 3
    reopened.close()


@pytest.mark.anyio
async def test_bus_continues_the_journal_numbering_and_flushes_on_close(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite3"
    async with EventBus(Journal(path)) as bus:
        for step in range(3):
            bus.publish(JobProgress(job_id="j", stage=Stage.LOAD, step=step, elapsed_s=0))
    async with EventBus(Journal(path)) as bus:
        assert bus.last_seq == 3
        event = bus.publish(JobProgress(job_id="j", stage=Stage.SAVE, elapsed_s=1))
        assert event.seq == 4
        # Replay across the restart comes from SQLite (the new bus's ring starts at seq 4).
        replayed = await bus.replay(0)
        assert [e.seq for e in replayed] == [1, 2, 3, 4]
    final = Journal(path)
    assert final.count() == 4
    final.close()


def test_closed_journal_refuses_new_writes() -> None:
    journal = Journal()
    journal.close()
    journal.close()  # idempotent
    journal.append_many(_events(1, 1))
    with pytest.raises(RuntimeError, match="closed"):
        journal.flush()
