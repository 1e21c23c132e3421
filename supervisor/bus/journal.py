"""The SQLite journal of the event bus: every published event, newest ``retention`` kept.

Writes are batched off the publish path: `append` only puts the event in an in-memory pending
batch (no I/O, no await); `flush` commits whatever is pending in one transaction and prunes to
the retention bound. `flush` is meant to run in a worker thread (the bus's flusher uses
``anyio.to_thread.run_sync``); every use of the connection holds one lock, so a flush from the
flusher thread, a flush before a replay and a read never interleave.

Invariants: the rows hold contiguous seqs (the bus numbers without gaps, retention deletes only
from the oldest end), so ``count == last_seq - first_seq + 1`` and pruning is one range delete.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from supervisor.bus.events import Event

__all__ = ["Journal", "JournalStats"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq  INTEGER PRIMARY KEY,
    ts   REAL NOT NULL,
    type TEXT NOT NULL,
    body TEXT NOT NULL
)
"""


@dataclass(frozen=True, slots=True)
class JournalStats:
    first_seq: int | None
    last_seq: int
    pending: int
    written: int


class Journal:
    """An append-only, bounded event log in SQLite (a file path or ``":memory:"``)."""

    def __init__(self, path: Path | str = ":memory:", *, retention: int = 100_000) -> None:
        if retention < 1:
            raise ValueError(f"journal retention must be at least 1, not {retention}")
        self.path = str(path)
        self.retention = retention
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # One connection shared by the event loop's thread and the flusher's threads; the lock
        # serializes them (sqlite3 objects are not safe for concurrent use).
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._pending: list[Event] = []
        self._pending_lock = threading.Lock()
        self._written = 0
        self._closed = False
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL under WAL: a commit survives a crash of this process; only a power loss
            # can take the newest transactions, which is the right price for an event log.
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(_SCHEMA)
            row = self._conn.execute("SELECT MAX(seq) FROM events").fetchone()
        self._last_seq: int = row[0] if row[0] is not None else 0

    @property
    def last_seq(self) -> int:
        """The newest seq written or pending (0 for an empty journal)."""
        with self._pending_lock:
            if self._pending:
                return self._pending[-1].seq
        return self._last_seq

    @property
    def pending(self) -> int:
        return len(self._pending)

    def append(self, event: Event) -> None:
        """Queue one event for the next flush. Never does I/O."""
        with self._pending_lock:
            self._pending.append(event)

    def append_many(self, events: list[Event]) -> None:
        with self._pending_lock:
            self._pending.extend(events)

    def flush(self) -> int:
        """Commit every pending event and prune to the retention bound; return how many."""
        with self._lock:
            if self._closed and self._pending:
                raise RuntimeError("the journal is closed; pending events cannot be written")
            with self._pending_lock:
                batch, self._pending = self._pending, []
            if not batch:
                return 0
            rows = [(e.seq, e.ts, e.type.value, e.to_json()) for e in batch]
            last = batch[-1].seq
            conn = self._conn
            conn.execute("BEGIN")
            try:
                conn.executemany("INSERT INTO events (seq, ts, type, body) VALUES (?,?,?,?)", rows)
                conn.execute("DELETE FROM events WHERE seq <= ?", (last - self.retention,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                with self._pending_lock:
                    self._pending[:0] = batch
                raise
            self._last_seq = last
            self._written += len(batch)
            return len(batch)

    def read(self, since: int, limit: int = 1000, *, until: int | None = None) -> list[Event]:
        """Committed events with ``since < seq <= until``, oldest first, at most ``limit``.

        Pending events are not visible: call `flush` first to read up to the newest."""
        upper = until if until is not None else self._last_seq
        with self._lock:
            rows = self._conn.execute(
                "SELECT body FROM events WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
                (since, upper, limit),
            ).fetchall()
        return [Event.from_json(body) for (body,) in rows]

    def first_seq(self) -> int | None:
        """The oldest seq still kept, or None when nothing is committed."""
        with self._lock:
            row = self._conn.execute("SELECT MIN(seq) FROM events").fetchone()
        return row[0] if row[0] is not None else None

    def count(self) -> int:
        with self._lock:
            row = self._conn.execute("SELECT COUNT(*) FROM events").fetchone()
        return int(row[0])

    def stats(self) -> JournalStats:
        return JournalStats(
            first_seq=self.first_seq(),
            last_seq=self.last_seq,
            pending=self.pending,
            written=self._written,
        )

    def close(self) -> None:
        """Flush what is pending, then close the connection. Idempotent."""
        if self._closed:
            return
        self.flush()
        with self._lock:
            self._closed = True
            self._conn.close()
