"""Check a store's SQLite file at open; when it is damaged, move it aside and salvage its rows.

Used by every SQLite store (jobs, learned strategies, calibration, and any other that wants it):

    spec = SalvageSpec(store="jobs", items="jobs", schema=SCHEMA, table="jobs")
    report = heal_if_damaged(path, spec)  # None: healthy; else moved aside and salvaged

Invariants:
- A damaged file is never deleted nor written to: it is renamed to `<name>.damaged-<UTC time>`
  (its -wal, -shm and -journal files follow, so the copy stays readable with its WAL) and read
  only through a read-only connection.
- The fresh file is created with the store's schema, so a store always opens on a healthy file.
- Rows are carried one by one; a row that can not be read, fails the store's own check or breaks
  a constraint is skipped, never guessed. A damaged page costs the rows on that page only: the
  reader steps over it by rowid (see `_read_rows`).
- An absent file is healthy (a first start); an empty (0-byte) file is damaged: a store always
  writes its schema at once, so 0 bytes means something truncated it.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from supervisor.core.store_health import StoreCorrupted, StoreHealReport

__all__ = [
    "SalvageSpec",
    "corruption_guard",
    "first_line",
    "heal",
    "heal_if_damaged",
    "is_corruption",
    "move_aside",
    "open_healed",
    "problem",
]

T = TypeVar("T")

# SQLite's words for a file that is not (or no longer) a valid database.
_CORRUPTION_WORDS = ("malformed", "not a database", "database corrupt", "file is encrypted")
# Files that belong to a database and must move with it.
_COMPANIONS = ("-wal", "-shm", "-journal")
_CHUNK = 256
# Stepping over a damaged region probes at most this far (rowids) and looks up at most this many
# rowids one by one; beyond, the rest of the table is taken as lost rather than spend minutes.
_MAX_PROBE = 1 << 62
_MAX_POINT_LOOKUPS = 100_000


@dataclass(frozen=True)
class SalvageSpec:
    # The store's name for people ("jobs" -> "the jobs database was damaged").
    store: str
    # What its rows are called ("jobs", "learned strategies").
    items: str
    # SQL script creating the store's tables and indexes (with IF NOT EXISTS).
    schema: str
    # The table whose rows the report counts; other tables are carried too.
    table: str
    # Raises when a row (column -> value) can not be used by the store; such rows are skipped.
    check_row: Callable[[dict[str, object]], object] | None = None


def is_corruption(exc: BaseException) -> bool:
    """True for SQLite's corruption errors (not for a locked or full database)."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    text = str(exc).lower()
    return any(word in text for word in _CORRUPTION_WORDS)


def first_line(exc: BaseException) -> str:
    """The error's first line (for a report's `detail`), at most 300 characters."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def problem(path: Path) -> str | None:
    """What is wrong with the file, or None when it is absent or passes `PRAGMA quick_check`."""
    if not path.exists():
        return None
    if path.stat().st_size == 0:
        return "the file is empty (0 bytes)"
    # With a WAL beside it (a server died), read-only: the last connection to close would
    # otherwise checkpoint the WAL into a file that may be damaged, and delete the WAL. Without
    # one, read-write, so a hot rollback journal is rolled back as any open would.
    has_wal = Path(f"{path}-wal").exists()
    target, uri = (f"{path.resolve().as_uri()}?mode=ro", True) if has_wal else (str(path), False)
    try:
        with closing(sqlite3.connect(target, uri=uri, timeout=5.0)) as db:
            rows = db.execute("PRAGMA quick_check").fetchall()
    except sqlite3.DatabaseError as exc:
        if not is_corruption(exc):
            raise  # locked, unreadable, disk full: not a damaged file, the caller's to report
        return first_line(exc)
    # quick_check answers "ok", or up to 100 findings, the first naming the database ("*** in
    # database main ***"), some spanning lines: a few, on one line, are enough to say why.
    findings = [" ".join(str(r[0]).split()) for r in rows if str(r[0]) != "ok"]
    if not findings:
        return None
    said = [f for f in findings if not f.startswith("***")] or findings
    return "; ".join(said[:3])[:300]


def move_aside(path: Path, now: float | None = None) -> Path:
    """Rename the file (and its companions) to `<name>.damaged-<UTC time>`; never overwrites."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(time.time() if now is None else now))
    target = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while any(Path(f"{target}{s}").exists() for s in ("", *_COMPANIONS)):
        n += 1
        target = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    os.rename(path, target)
    for suffix in _COMPANIONS:
        companion = Path(f"{path}{suffix}")
        if companion.exists():
            os.rename(companion, f"{target}{suffix}")
    return target


def open_healed(
    path: Path, spec: SalvageSpec, open_store: Callable[[], T]
) -> tuple[T, StoreHealReport | None]:
    """Check and heal the file, then `open_store()` (which creates the schema). When the open
    still fails with a corruption error (quick_check passed but e.g. `PRAGMA journal_mode=WAL`
    did not), heal from what the open said and open once more; `open_store` must close what it
    opened before it raises, so the file can move. A second failure is not damage we can mend
    here: it propagates."""
    report = heal_if_damaged(path, spec)
    try:
        return open_store(), report
    except sqlite3.DatabaseError as exc:
        if report is not None or not is_corruption(exc):
            raise
        report = heal(path, spec, first_line(exc))
    return open_store(), report


@contextmanager
def corruption_guard(
    store: str, path: Path, seen: Callable[[StoreCorrupted], None] | None = None
) -> Iterator[None]:
    """SQLite's corruption errors inside become `StoreCorrupted` (code STORE.CORRUPTED, naming
    the file), told to `seen` first; other errors pass unchanged."""
    try:
        yield
    except StoreCorrupted:
        raise
    except sqlite3.DatabaseError as exc:
        if not is_corruption(exc):
            raise
        damage = StoreCorrupted(store=store, path=path, detail=first_line(exc))
        if seen is not None:
            seen(damage)
        raise damage from exc


def heal_if_damaged(path: Path, spec: SalvageSpec) -> StoreHealReport | None:
    """Check the file; when damaged, move it aside and salvage it. None when it was healthy."""
    found = problem(path)
    return None if found is None else heal(path, spec, found)


def heal(path: Path, spec: SalvageSpec, detail: str) -> StoreHealReport:
    """Move the damaged file aside, create a fresh one with the store's schema and carry into it
    what can be read."""
    moved = move_aside(path)
    with closing(sqlite3.connect(path)) as fresh:
        fresh.executescript(spec.schema)
        counts = _salvage(moved, fresh, spec)
    recovered, lost = counts.pop(spec.table, (0, None))
    others = "; ".join(
        f"{table}: {got} of {got + missed} rows" if missed is not None else f"{table}: {got} rows"
        for table, (got, missed) in sorted(counts.items())
    )
    return StoreHealReport(
        store=spec.store,
        path=path,
        moved_to=moved,
        recovered=recovered,
        lost=lost,
        detail=f"{detail}; also carried {others}" if others else detail,
        items=spec.items,
    )


def _salvage(
    moved: Path, fresh: sqlite3.Connection, spec: SalvageSpec
) -> dict[str, tuple[int, int | None]]:
    """Per table: (rows carried, rows lost or None when the damaged file can not say)."""
    if moved.stat().st_size == 0:
        return {}
    # Read-only, so the damaged copy is never written (no checkpoint, no rollback): with its WAL
    # when it has one; else immutable (no locks, no -shm or -wal files created beside it).
    has_wal = Path(f"{moved}-wal").exists()
    uri = f"{moved.resolve().as_uri()}?{'mode=ro' if has_wal else 'immutable=1'}"
    try:
        src = sqlite3.connect(uri, uri=True, timeout=5.0)
        # A truncated file is shorter than its header says; SQLite refuses to read any page of
        # it unless the schema is "writable" (nothing is written: the connection is read-only).
        src.execute("PRAGMA writable_schema=ON")
    except sqlite3.Error:
        return {}
    with closing(src):
        _create_foreign_tables(src, fresh)
        tables = [
            r[0]
            for r in fresh.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            )
        ]
        counts: dict[str, tuple[int, int | None]] = {}
        for table in tables:
            check = spec.check_row if table == spec.table else None
            counts[table] = _copy_table(src, fresh, table, check)
        return counts


def _create_foreign_tables(src: sqlite3.Connection, fresh: sqlite3.Connection) -> None:
    """Tables of the damaged file the store's schema does not create (another store sharing the
    file) are created from the damaged file's own schema, so their rows are carried too."""
    try:
        rows = src.execute(
            "SELECT type, name, sql FROM sqlite_master "
            "WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite_%' ORDER BY type = 'index'"
        ).fetchall()
    except sqlite3.DatabaseError:
        return
    known = {r[0] for r in fresh.execute("SELECT name FROM sqlite_master")}
    for _kind, name, sql in rows:
        if name not in known:
            try:
                fresh.execute(sql)
            except sqlite3.Error:
                continue  # a garbled statement: that table's rows stay in the damaged copy


def _columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [str(r[1]) for r in db.execute(f'PRAGMA table_info("{table}")')]


def _copy_table(
    src: sqlite3.Connection,
    fresh: sqlite3.Connection,
    table: str,
    check: Callable[[dict[str, object]], object] | None,
) -> tuple[int, int | None]:
    columns = _columns(fresh, table)
    try:
        readable = set(_columns(src, table))
        total: int | None = int(src.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0])
    except sqlite3.DatabaseError:
        readable, total = set(columns), None
    columns = [c for c in columns if c in readable]
    if not columns:
        return 0, total
    names = ", ".join(f'"{c}"' for c in columns)
    insert = f'INSERT INTO "{table}" ({names}) VALUES ({", ".join("?" * len(columns))})'
    carried = 0
    with fresh:
        for row in _read_rows(src, table, names):
            values = row[1:]
            if check is not None:
                try:
                    check(dict(zip(columns, values, strict=True)))
                except Exception:  # noqa: BLE001 - any failure of the store's check skips the row
                    continue
            try:
                fresh.execute(insert, values)
            except sqlite3.Error:
                continue  # a garbled value breaks a constraint: skip the row, keep the rest
            carried += 1
    lost = None if total is None or total < carried else total - carried
    return carried, lost


def _read_rows(src: sqlite3.Connection, table: str, names: str) -> Iterator[tuple[object, ...]]:
    """(rowid, *columns) of every readable row with a positive rowid (SQLite gives rowids from 1),
    in rowid order. Reads in rowid ranges; where a read fails, probes forward for the next
    readable row and looks up the rowids in between one by one, so only the rows on the damaged
    pages are lost."""
    columns = f'SELECT rowid, {names} FROM "{table}"'
    scan = f"{columns} WHERE rowid > ? ORDER BY rowid LIMIT {_CHUNK}"
    probe = f"{columns} WHERE rowid >= ? ORDER BY rowid LIMIT 1"
    point = f"{columns} WHERE rowid = ?"
    after = 0  # every row up to here has been yielded or found unreadable
    while True:
        got = 0
        try:
            for row in src.execute(scan, (after,)):
                yield tuple(row)
                after = int(row[0])
                got += 1
        except sqlite3.DatabaseError:
            resume = _next_readable(src, probe, after)
            if resume is None:
                return
            # sqlite3 steps to the next row before it hands one out, so the row after `after`
            # may have been read and dropped with the error: the lookups start right after it,
            # and end at `resume` (included) so `after` always moves forward.
            if resume - after <= _MAX_POINT_LOOKUPS:
                for rowid in range(after + 1, resume + 1):
                    try:
                        found = src.execute(point, (rowid,)).fetchone()
                    except sqlite3.DatabaseError:
                        continue  # on a damaged page
                    if found is not None:
                        yield tuple(found)
            after = resume
            continue
        if got < _CHUNK:
            return


def _next_readable(src: sqlite3.Connection, probe: str, after: int) -> int | None:
    """The smallest rowid > `after`, probed at doubling distances, from which the first row reads
    in full (or no row follows); None when every probe fails (the table's top pages are
    damaged)."""
    step = 1
    while step <= _MAX_PROBE:
        start = after + step
        try:
            src.execute(probe, (start,)).fetchone()
        except sqlite3.DatabaseError:
            step *= 2
            continue
        return start
    return None
