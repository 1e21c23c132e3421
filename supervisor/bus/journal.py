"""The SQLite journal of the event bus: every published event, the last ``retention`` numbers
kept, and the durable reservation that keeps a number from ever naming two events.

Writes are batched off the publish path: `append` only puts the event in an in-memory pending
batch (no I/O, no await); `flush` commits whatever is pending in one transaction and prunes to
the retention bound. `flush` is meant to run in a worker thread (the bus's flusher uses
``anyio.to_thread.run_sync``); every use of the connection holds one lock, so a flush from the
flusher thread, a reservation, a flush before a replay and a read never interleave.

Numbering across restarts (the bus hands out numbers, the journal makes them durable):

- ``reserved_through`` is the highest number the bus may hand out. `reserve` raises it and
  makes it durable (fsync'd, in the file `ReservationFile` beside the journal) before it
  returns, so no number is used before its reservation would survive a crash or a power loss.
  Each flush copies it into the ``meta`` row of the same name (a second record, e.g. for a
  journal whose ``.seq`` file was removed);
- at open, numbering resumes after ``max(reserved_through, newest row)`` (`last_seq`); numbers
  reserved by a run that died (unused, or published and not yet committed) become a recorded
  gap (table ``gaps``, reason ``restart``), never a number for a second event;
- a clean `close` lowers the reservation to the last number used (all of them committed), so a
  clean restart leaves no gap.

Rows are therefore in increasing seq order with holes only where ``gaps`` says why (or where
the file was damaged); retention deletes every row numbered ``last - retention`` or less.

A file that fails ``PRAGMA quick_check`` at open is healed: moved aside (never deleted),
whatever rows can be read are carried into a fresh file (`supervisor.bus.journal_heal`), the
lost ranges are recorded as gaps (``damaged``) and `heal_report` says what happened.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from supervisor.bus.events import BusGap, Event, GapReason
from supervisor.bus.journal_heal import (
    FLUSHED_KEY,
    MAX_RESERVE_AHEAD,
    RESERVED_KEY,
    SCHEMA,
    SET_META,
    heal,
)
from supervisor.bus.reservation import ReservationFile
from supervisor.core.sqlite_salvage import problem
from supervisor.core.store_health import StoreHealReport

__all__ = ["MAX_RESERVE_AHEAD", "Gap", "Journal", "JournalStats"]

# (from_seq, to_seq, reason): numbers with no event, both ends included.
Gap = tuple[int, int, GapReason]


@dataclass(frozen=True, slots=True)
class JournalStats:
    first_seq: int | None
    last_seq: int
    pending: int
    written: int
    reserved_through: int


class Journal:
    """An append-only, bounded event log in SQLite (a file path or ``":memory:"``)."""

    def __init__(self, path: Path | str = ":memory:", *, retention: int = 100_000) -> None:
        if retention < 1:
            raise ValueError(f"journal retention must be at least 1, not {retention}")
        self.path = str(path)
        self.retention = retention
        # What healing found at open; None when the file was healthy (or new).
        self.heal_report: StoreHealReport | None = None
        # Reads that met a damaged page at run time (answered with `damaged` gap markers).
        self.damaged_reads = 0
        self._seqfile: ReservationFile | None = None
        durable = 0
        if self.path != ":memory:":
            file = Path(self.path)
            file.parent.mkdir(parents=True, exist_ok=True)
            self._seqfile = ReservationFile(file.with_name(file.name + ".seq"))
            durable = self._seqfile.value or 0
            detail = problem(file)
            if detail is not None:
                self.heal_report = heal(file, detail, retention, self._seqfile.value)
        # One connection shared by the event loop's thread and the flusher's threads; the lock
        # serializes them (sqlite3 objects are not safe for concurrent use).
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        # Reservations take their own lock: they never wait for a flush.
        self._reserve_lock = threading.Lock()
        self._pending: list[Event] = []
        self._pending_lock = threading.Lock()
        self._written = 0
        self._closed = False
        with self._lock:
            conn = self._conn
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL under WAL: a commit survives a crash of this process; only a power loss
            # can take the newest transactions (the reservation is fsync'd on its own).
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(SCHEMA)
            newest = conn.execute("SELECT MAX(seq) FROM events").fetchone()[0] or 0
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (RESERVED_KEY,)).fetchone()
            reserved = max(int(row[0]) if row is not None else 0, newest, durable)
            # Gaps above `newest` already recorded (an earlier crash, a heal) keep their reason.
            covered = conn.execute("SELECT MAX(to_seq) FROM gaps").fetchone()[0] or 0
            if reserved > max(newest, covered):
                # The last run reserved numbers it did not commit: it died. Whatever it handed
                # out above `newest` is lost; those numbers stay unused for ever.
                conn.execute(
                    "INSERT INTO gaps VALUES (?, ?, ?)",
                    (max(newest, covered) + 1, reserved, GapReason.RESTART.value),
                )
            conn.execute(SET_META, (RESERVED_KEY, reserved))
            rows = conn.execute("SELECT * FROM gaps ORDER BY from_seq").fetchall()
        # The committed seq, and the numbering floor: the bus continues after it.
        self._flushed = newest
        self._last_seq = reserved
        self._reserved = reserved
        # Replaced whole (never mutated), so the event loop reads it without the lock.
        self._gaps: tuple[Gap, ...] = tuple((a, b, GapReason(r)) for a, b, r in rows)

    # -- numbering ----------------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        """The newest seq written or pending, or the floor numbering resumes after (0: new)."""
        with self._pending_lock:
            if self._pending:
                return self._pending[-1].seq
        return self._last_seq

    @property
    def reserved_through(self) -> int:
        """The highest number that may be handed out; durable (fsync'd) once returned."""
        return self._reserved

    def reserve(self, through: int) -> int:
        """Raise the reservation to ``through`` and make it durable; return the reservation.

        Blocks for one fsync'd commit (run it in a worker thread where possible). Never lowers
        the reservation."""
        with self._reserve_lock:
            if through <= self._reserved:
                return self._reserved
            if self._closed:
                raise RuntimeError("the journal is closed; no number can be reserved")
            if through - self.last_seq > MAX_RESERVE_AHEAD:
                raise ValueError(f"a reservation runs at most {MAX_RESERVE_AHEAD} ahead")
            if self._seqfile is not None:
                self._seqfile.write(through)
            self._reserved = through
            return through

    # -- writing ------------------------------------------------------------------------------

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
            horizon = last - self.retention
            conn = self._conn
            conn.execute("BEGIN")
            try:
                conn.executemany("INSERT INTO events (seq, ts, type, body) VALUES (?,?,?,?)", rows)
                conn.execute("DELETE FROM events WHERE seq <= ?", (horizon,))
                conn.execute("DELETE FROM gaps WHERE to_seq <= ?", (horizon,))
                conn.execute(SET_META, (FLUSHED_KEY, last))
                if last > self._reserved:
                    # Only a caller numbering by hand (no bus) gets here: the bus reserves
                    # before it numbers. The rows never lie above the reservation.
                    self.reserve(last)
                conn.execute(SET_META, (RESERVED_KEY, self._reserved))
                conn.execute("COMMIT")
            except BaseException:
                # A failed COMMIT (a full disk) may already have rolled back: the original
                # error is the one to report, never "no transaction is active".
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                with self._pending_lock:
                    self._pending[:0] = batch
                raise
            self._flushed = self._last_seq = last
            if self._gaps and self._gaps[0][1] <= horizon:
                self._gaps = tuple(g for g in self._gaps if g[1] > horizon)
            self._written += len(batch)
            return len(batch)

    # -- reading ------------------------------------------------------------------------------

    def read(self, since: int, limit: int = 1000, *, until: int | None = None) -> list[Event]:
        """Committed events with ``since < seq <= until``, oldest first, at most ``limit``.

        Pending events are not visible: call `flush` first to read up to the newest. Raises
        `sqlite3.DatabaseError` on a damaged page (see `read_marked`)."""
        upper = until if until is not None else self._last_seq
        with self._lock:
            rows = self._conn.execute(
                "SELECT body FROM events WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
                (since, upper, limit),
            ).fetchall()
        return [Event.from_json(body) for (body,) in rows]

    def read_marked(self, first: int, until: int, limit: int) -> list[Event]:
        """Like ``read(first - 1, limit, until=until)``, but a damaged part of the file is
        answered with a ``bus.gap`` (reason ``damaged``) marker in its place, never an error.

        The range is halved around a failing read down to single numbers, so only the numbers
        on damaged pages are given up; a marker's envelope seq is its ``to_seq``."""
        out: list[Event] = []
        got = 0
        todo = [(first, until)]
        while todo and got < limit:
            low, high = todo.pop()
            try:
                page = self.read(low - 1, limit - got, until=high)
            except (sqlite3.DatabaseError, ValueError):
                # ValueError: a row that reads but is not a valid event (garbage in a cell).
                self.damaged_reads += 1
                if low < high:
                    middle = (low + high) // 2
                    todo += [(middle + 1, high), (low, middle)]
                    continue
                last = out[-1] if out else None
                if last is not None and isinstance(last.data, BusGap) and last.seq == low - 1:
                    low = last.data.from_seq
                    out.pop()
                marker = BusGap(from_seq=low, to_seq=high, reason=GapReason.DAMAGED)
                out.append(Event(seq=high, ts=time.time(), data=marker))
                continue
            out += page
            got += len(page)
        return out

    def describe_gap(self, first: int, last: int) -> list[Gap]:
        """Why the numbers ``first..last`` have no event: recorded gaps by their reason, the
        rest ``retention`` below the retention horizon and ``missing`` above it."""
        parts: list[Gap] = []
        cursor = first
        for low, high, reason in self._gaps:
            if high < cursor:
                continue
            if low > last:
                break
            if low > cursor:
                parts += self._unrecorded(cursor, low - 1)
            parts.append((max(low, cursor), min(high, last), reason))
            cursor = min(high, last) + 1
        if cursor <= last:
            parts += self._unrecorded(cursor, last)
        return parts

    def _unrecorded(self, first: int, last: int) -> list[Gap]:
        horizon = self._flushed - self.retention
        if last <= horizon:
            return [(first, last, GapReason.RETENTION)]
        if first > horizon:
            return [(first, last, GapReason.MISSING)]
        return [(first, horizon, GapReason.RETENTION), (horizon + 1, last, GapReason.MISSING)]

    @property
    def gaps(self) -> tuple[Gap, ...]:
        """The recorded gaps still within retention, oldest first."""
        return self._gaps

    def first_seq(self) -> int | None:
        """The oldest seq still kept, or None when nothing is committed."""
        with self._lock:
            row = self._conn.execute("SELECT MIN(seq) FROM events").fetchone()
        return row[0] if row[0] is not None else None

    def count(self) -> int:
        with self._lock:
            row = self._conn.execute("SELECT COUNT(*) FROM events").fetchone()
        return int(row[0])

    @property
    def written(self) -> int:
        """Events committed by this journal object; never waits on the lock (the state dump
        reads it on the event loop while a flush may hold the lock)."""
        return self._written

    def stats(self) -> JournalStats:
        return JournalStats(
            first_seq=self.first_seq(),
            last_seq=self.last_seq,
            pending=self.pending,
            written=self._written,
            reserved_through=self._reserved,
        )

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Flush what is pending, lower the reservation to the last number used, then close
        the connection. Idempotent."""
        if self._closed:
            return
        self.flush()
        with self._lock, self._reserve_lock:
            # Every number handed out is committed now (the bus appends each one before it is
            # seen), so the unused rest of the reservation is released: no gap on a clean
            # restart. Numbers a dead run reserved stay reserved (`_last_seq` is that floor).
            if self._reserved > self._last_seq:
                if self._seqfile is not None:
                    self._seqfile.write(self._last_seq)
                self._conn.execute(SET_META, (RESERVED_KEY, self._last_seq))
                self._reserved = self._last_seq
            self._closed = True
            self._conn.close()
            if self._seqfile is not None:
                self._seqfile.close()
