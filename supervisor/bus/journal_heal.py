"""Reading back whatever can be read from a damaged event journal.

The check at open and the move aside are the stores' shared ones
(`supervisor.core.sqlite_salvage.problem` and `move_aside`: the damaged file is renamed with
its ``-wal`` and ``-shm`` to ``<name>.damaged-<UTC timestamp>``, never deleted). `salvage` then
reads the moved copy two ways and keeps the union:

- through SQLite, range by range, halving a range whose read fails down to single numbers (a
  damaged page costs only the rows on it as long as the b-tree above it is readable);
- raw, page by page, from the file and from every WAL frame: each table-leaf cell is decoded
  without the b-tree, so rows survive even when the interior pages are gone (a file truncated
  to half keeps the leaves of its first half, its root points past the end).

Every row found is validated (the body must parse as an `Event` whose seq is the row's key),
so garbage that decodes as a cell is never carried over. Events never change once written, so
two copies of one seq (a stale page, an old WAL frame) are the same event; the reservation is
taken as the largest value found, which can only widen the gap, never reuse a number.
"""

from __future__ import annotations

import sqlite3
import struct
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from supervisor.bus.events import Event, GapReason
from supervisor.core.sqlite_salvage import move_aside
from supervisor.core.store_health import StoreHealReport

__all__ = [
    "FLUSHED_KEY",
    "MAX_RESERVE_AHEAD",
    "RESERVED_KEY",
    "SCHEMA",
    "SET_META",
    "Salvage",
    "heal",
    "salvage",
]

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq  INTEGER PRIMARY KEY,
    ts   REAL NOT NULL,
    type TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS gaps (
    from_seq INTEGER PRIMARY KEY,
    to_seq   INTEGER NOT NULL,
    reason   TEXT NOT NULL
);
"""
SET_META = "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)"

# The furthest a reservation may run ahead of the last number used. A healed journal whose
# reservation could not be read resumes this far past anything it could have handed out.
MAX_RESERVE_AHEAD = 1_000_000

_HEADER = b"SQLite format 3\x00"
_LEAF_TABLE = 0x0D
# The journal's meta rows (integers): the highest number the bus may hand out, and the highest
# seq committed.
RESERVED_KEY = "reserved_through"
FLUSHED_KEY = "flushed_through"
_META_KEYS = (RESERVED_KEY, FLUSHED_KEY)


@dataclass
class Salvage:
    """What could be read from a damaged journal."""

    events: dict[int, Event] = field(default_factory=dict)
    # The largest value found per meta key (`RESERVED_KEY`, `FLUSHED_KEY`); absent: unreadable.
    meta: dict[str, int] = field(default_factory=dict)
    # Recorded gaps: from_seq -> (to_seq, reason).
    gaps: dict[int, tuple[int, str]] = field(default_factory=dict)


def heal(file: Path, detail: str, retention: int, reserved: int | None) -> StoreHealReport:
    """Move the damaged file aside, carry what can be read into a fresh one, record the
    lost ranges as gaps and the reservation to resume after."""
    moved = move_aside(file)
    found = salvage(moved)
    seqs = sorted(found.events)
    flushed = max(found.meta.get(FLUSHED_KEY, 0), seqs[-1] if seqs else 0)
    if reserved is not None or RESERVED_KEY in found.meta:
        # The reservation file (kept out of the damaged file) or the damaged file's own copy.
        floor = max(reserved or 0, found.meta.get(RESERVED_KEY, 0), flushed)
    elif seqs:
        # The kept rows were all within `retention` of the last number used, and the
        # reservation at most MAX_RESERVE_AHEAD beyond it: resume past both.
        floor = seqs[0] + retention + MAX_RESERVE_AHEAD
    else:
        floor = flushed  # nothing says how far the old numbering went
    window = max(1, flushed - retention + 1)
    kept = [seq for seq in seqs if seq >= window]
    recorded = sorted((a, b, r) for a, (b, r) in found.gaps.items() if b >= window)
    gaps = list(recorded)
    lost = 0
    expected = window
    for seq in [*kept, flushed + 1]:
        if seq > expected:
            # A hole: the numbers a recorded gap (an earlier restart) explains were never
            # events; the rest were, and are lost with the damaged pages.
            explained = sum(max(0, min(b, seq - 1) - max(a, expected) + 1) for a, b, _ in recorded)
            if explained < seq - expected:
                lost += seq - expected - explained
                gaps.append((expected, seq - 1, GapReason.DAMAGED.value))
        expected = seq + 1
    if floor > flushed:
        known_floor = reserved is not None or RESERVED_KEY in found.meta
        reason = GapReason.RESTART if known_floor else GapReason.DAMAGED
        gaps.append((flushed + 1, floor, reason.value))
    with closing(sqlite3.connect(file, isolation_level=None)) as fresh:
        fresh.executescript(SCHEMA)
        fresh.execute("BEGIN")
        fresh.executemany(
            "INSERT INTO events VALUES (?,?,?,?)",
            [(s, e.ts, e.type.value, e.to_json()) for s in kept for e in [found.events[s]]],
        )
        fresh.executemany("INSERT OR IGNORE INTO gaps VALUES (?,?,?)", gaps)
        fresh.executemany(SET_META, [(RESERVED_KEY, floor), (FLUSHED_KEY, flushed)])
        fresh.execute("COMMIT")
    known = FLUSHED_KEY in found.meta or RESERVED_KEY in found.meta
    return StoreHealReport(
        store="events",
        path=file,
        moved_to=moved,
        recovered=len(kept),
        lost=lost if known else None,
        detail=detail,
        items="events",
    )


def salvage(path: Path) -> Salvage:
    """Read every valid event and the reservation from a (moved-aside) damaged journal."""
    found = Salvage()
    _salvage_sql(path, found)
    for rowid, values in _raw_cells(path):
        _take_raw(found, rowid, values)
    return found


def _valid(seq: int, body: object) -> Event | None:
    if not isinstance(body, str):
        return None
    try:
        event = Event.from_json(body)
    except (ValidationError, ValueError):
        return None
    return event if event.seq == seq else None


def _salvage_sql(path: Path, found: Salvage) -> None:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    except sqlite3.DatabaseError:
        return
    with closing(conn):
        try:
            # Lets a file shorter than its header says be read up to its end (SQLite otherwise
            # refuses it whole); the connection is read-only, nothing is written.
            conn.execute("PRAGMA writable_schema=ON")
            for key, value in conn.execute("SELECT key, value FROM meta").fetchall():
                _take_meta(found, key, value)
            for first, last, reason in conn.execute("SELECT * FROM gaps").fetchall():
                found.gaps[first] = (last, reason)
        except sqlite3.DatabaseError:
            pass
        try:
            bounds = conn.execute("SELECT MIN(seq), MAX(seq) FROM events").fetchone()
        except sqlite3.DatabaseError:
            bounds = (1, max(found.meta.values(), default=0))
        low, high = (bounds[0] or 1), (bounds[1] or 0)
        for first in range(low, high + 1, 512):
            _read_range(conn, first, min(first + 511, high), found)


def _read_range(conn: sqlite3.Connection, first: int, last: int, found: Salvage) -> None:
    try:
        rows = conn.execute(
            "SELECT seq, body FROM events WHERE seq BETWEEN ? AND ?", (first, last)
        ).fetchall()
    except sqlite3.DatabaseError:
        if first == last:
            return  # on a damaged page: the raw scan may still find it
        middle = (first + last) // 2
        _read_range(conn, first, middle, found)
        _read_range(conn, middle + 1, last, found)
        return
    for seq, body in rows:
        event = _valid(seq, body)
        if event is not None:
            found.events.setdefault(seq, event)


def _take_meta(found: Salvage, key: object, value: object) -> None:
    if key in _META_KEYS and isinstance(key, str) and isinstance(value, int):
        found.meta[key] = max(found.meta.get(key, 0), value)


def _take_raw(found: Salvage, rowid: int, values: list[object]) -> None:
    # Rows of the three tables, told apart by shape. events: (seq, the rowid alias, is stored
    # NULL), ts, type, body. meta: key, value. gaps: (from_seq, NULL), to_seq, reason.
    if len(values) == 4 and values[0] is None and rowid not in found.events:
        event = _valid(rowid, values[3])
        if event is not None and event.type.value == values[2]:
            found.events[rowid] = event
    elif len(values) == 2:
        _take_meta(found, values[0], values[1])
    elif len(values) == 3 and values[0] is None and isinstance(values[1], int) and rowid > 0:
        if isinstance(values[2], str) and values[1] >= rowid:
            found.gaps.setdefault(rowid, (values[1], values[2]))


# -- raw pages ----------------------------------------------------------------------------------


def _raw_cells(path: Path) -> Iterator[tuple[int, list[object]]]:
    """Every decodable table-leaf cell of the file's pages and of its WAL's frames."""
    try:
        data = path.read_bytes()
    except OSError:
        return
    page_size, reserved = 4096, 0
    if data.startswith(_HEADER) and len(data) >= 100:
        raw_size = struct.unpack_from(">H", data, 16)[0]
        page_size = 65536 if raw_size == 1 else raw_size or 4096
        reserved = data[20]
    usable = page_size - reserved
    pages = [(i, data, i * page_size) for i in range(len(data) // page_size)]
    wal = path.with_name(path.name + "-wal")
    wal_data = wal.read_bytes() if wal.exists() else b""
    offset = 32
    while offset + 24 + page_size <= len(wal_data):
        pages.append((-1, wal_data, offset + 24))
        offset += 24 + page_size
    for index, buf, base in pages:
        yield from _leaf_cells(buf, base, 100 if index == 0 else 0, page_size, usable, data)


def _leaf_cells(
    buf: bytes, base: int, header: int, page_size: int, usable: int, main: bytes
) -> Iterator[tuple[int, list[object]]]:
    if buf[base + header] != _LEAF_TABLE:
        return
    cells = struct.unpack_from(">H", buf, base + header + 3)[0]
    page = buf[base : base + page_size]
    for k in range(cells):
        try:
            pointer = struct.unpack_from(">H", page, header + 8 + 2 * k)[0]
            yield _cell(page, pointer, usable, page_size, main)
        except (IndexError, ValueError, struct.error, UnicodeDecodeError):
            continue


def _cell(
    page: bytes, at: int, usable: int, page_size: int, main: bytes
) -> tuple[int, list[object]]:
    size, at = _varint(page, at)
    rowid, at = _varint(page, at)
    if size > 1 << 24:
        raise ValueError("implausible payload size")
    most = usable - 35
    if size <= most:
        payload = page[at : at + size]
    else:  # the SQLite file format's overflow rule
        least = (usable - 12) * 32 // 255 - 23
        local = least + (size - least) % (usable - 4)
        local = local if local <= most else least
        chunks = [page[at : at + local]]
        next_page = struct.unpack_from(">I", page, at + local)[0]
        have, hops = local, 0
        while have < size and next_page and hops < 4096:
            start = (next_page - 1) * page_size
            over = main[start : start + usable]
            if len(over) < 5:
                raise ValueError("overflow page past the end")
            next_page = struct.unpack_from(">I", over, 0)[0]
            chunks.append(over[4 : 4 + min(usable - 4, size - have)])
            have, hops = have + len(chunks[-1]), hops + 1
        payload = b"".join(chunks)
    if len(payload) != size:
        raise ValueError("truncated payload")
    return (rowid - (1 << 64) if rowid >= 1 << 63 else rowid), _record(payload)


def _record(payload: bytes) -> list[object]:
    header_size, at = _varint(payload, 0)
    types: list[int] = []
    while at < header_size:
        serial, at = _varint(payload, at)
        types.append(serial)
    values: list[object] = []
    at = header_size
    for serial in types:
        if serial in (0, 8, 9):
            values.append(None if serial == 0 else serial - 8)
        elif 1 <= serial <= 6:
            width = (0, 1, 2, 3, 4, 6, 8)[serial]
            values.append(int.from_bytes(payload[at : at + width], "big", signed=True))
            at += width
        elif serial == 7:
            values.append(struct.unpack_from(">d", payload, at)[0])
            at += 8
        elif serial >= 12:
            width = (serial - 12) // 2
            chunk = payload[at : at + width]
            values.append(chunk.decode() if serial % 2 else chunk)
            at += width
        else:
            raise ValueError(f"serial type {serial} is reserved")
    if at != len(payload):
        raise ValueError("record length does not match its header")
    return values


def _varint(buf: bytes, at: int) -> tuple[int, int]:
    value = 0
    for i in range(8):
        byte = buf[at + i]
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, at + i + 1
    return (value << 8) | buf[at + 8], at + 9
