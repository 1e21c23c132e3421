"""Stores that heal: real SQLite files damaged on disk, reopened by the real stores.

Expected counts come from the file's own page layout (SQLite's `dbstat`), read before the damage:
a row is readable when its leaf page is intact; the total is known when an index of the table
survived (count(*) reads it).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

from supervisor.core.params import GenerationParams
from supervisor.core.sqlite_salvage import move_aside
from supervisor.core.store_health import StoreCorrupted, tolerate
from supervisor.errors import Category, ErrorCode, ErrorReport, default_categorizer, explain
from supervisor.errors.report import Stage
from supervisor.jobs.job import Job
from supervisor.jobs.job_store import JobStore
from supervisor.recovery.calibration import CalibrationStore, PeakSample
from supervisor.recovery.ladder import RungId
from supervisor.recovery.learned_strategies import LearnedStrategies, StrategyKey

REPO = Path(__file__).resolve().parents[1]
GARBAGE = b"\xde\xad\xbe\xef" * 1024  # one page of bytes no SQLite page starts with


def _job(i: int) -> Job:
    # ~500-byte rows: 8 to a 4 KiB page, so 60 jobs fill several leaf pages.
    prompt = f"a lighthouse at dusk, take {i} " + "x" * 200
    params = GenerationParams(prompt=prompt, width=32, height=32, num_frames=5, steps=2)
    return Job(id=f"j{i:04d}", model="tiny-wan", params=params, created_ts=1000.0 + i)


def _fill_jobs(path: Path) -> None:
    store = JobStore(path)
    for i in range(60):
        store.submit(_job(i))
    store.close()


def _fill_strategies(path: Path) -> None:
    store = LearnedStrategies(path)
    rungs = list(RungId)
    for i in range(200):
        key = StrategyKey(f"model-{i:04d}-" + "w" * 100, "cpu", 2048, i % 40)
        store.remember(key, rungs[i % len(rungs)])


def _fill_peaks(path: Path) -> None:
    store = CalibrationStore(path)
    for i in range(300):
        stage = Stage.DENOISE if i % 3 else Stage.DECODE
        store.record("tiny-wan-" + "p" * 60, "cpu", PeakSample(stage, 10**9 + i, 10**6, 2 * 10**9))
    store.close()  # WAL: the rows reach the main file at the last connection's checkpoint


@dataclass(frozen=True)
class Kind:
    name: str
    table: str
    store: str  # as the reason says it: "the <store> database was damaged"
    items: str
    fill: Callable[[Path], None]
    open: Callable[[Path], JobStore | LearnedStrategies | CalibrationStore]


_STRATEGIES = "learned strategies"
KINDS = [
    Kind("jobs", "jobs", "jobs", "jobs", _fill_jobs, JobStore),
    Kind("strategies", "learned_strategies", _STRATEGIES, _STRATEGIES,
         _fill_strategies, LearnedStrategies),
    Kind("calibration", "memory_peaks", "memory calibration", "memory measurements",
         _fill_peaks, CalibrationStore),
]  # fmt: skip


@dataclass(frozen=True)
class Layout:
    size: int
    page_size: int
    pages: list[tuple[str, int, str, int]]  # (btree name, page number, page type, cells)
    indexes: dict[str, set[str]]  # table -> its index btrees

    def leaves(self, table: str) -> list[tuple[int, int]]:
        return [
            (n, cells) for name, n, kind, cells in self.pages if name == table and kind == "leaf"
        ]

    def leaf_at(self, table: str, fraction: float) -> int:
        """The table's first leaf page at or after `fraction` of the file."""
        first = int(self.size * fraction) // self.page_size + 1
        return min(n for n, _ in self.leaves(table) if n >= first)

    def expected(self, table: str, damaged: set[int] | None) -> tuple[int, int | None]:
        """(rows readable, total when the damaged file can still count it)."""
        if damaged is None:
            return 0, None
        inner = {n for name, n, kind, _ in self.pages if name == table and kind != "leaf"}
        assert not damaged & inner, "the test damages leaves only: its expectation needs it"
        readable = sum(cells for n, cells in self.leaves(table) if n not in damaged)
        total = sum(cells for _, cells in self.leaves(table))
        by_index = [
            {n for name, n, _, _ in self.pages if name == index} for index in self.indexes[table]
        ]
        counted = any(not pages & damaged for pages in by_index)
        return readable, total if counted else None


def _layout(path: Path) -> Layout:
    with closing(sqlite3.connect(path)) as db:
        pages = [
            (str(r[0]), int(r[1]), str(r[2]), int(r[3]))
            for r in db.execute("SELECT name, pageno, pagetype, ncell FROM dbstat ORDER BY pageno")
        ]
        page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
        indexes: dict[str, set[str]] = {}
        for table, index in db.execute("SELECT tbl_name, name FROM sqlite_master"):
            indexes.setdefault(str(table), set())
            if index != table:
                indexes[str(table)].add(str(index))
    return Layout(path.stat().st_size, page_size, pages, indexes)


def _rows(path: Path, table: str) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(path)) as db:
        return [tuple(r) for r in db.execute(f"SELECT * FROM {table}")]


@dataclass(frozen=True)
class Damage:
    name: str
    # Damages the file; returns the damaged pages (None: the whole file is unreadable).
    apply: Callable[[Path, Layout, str], set[int] | None]


def _truncate_half(path: Path, layout: Layout, table: str) -> set[int]:
    keep = layout.size // 2 // layout.page_size  # whole pages, so the cut is exact
    with path.open("r+b") as f:
        f.truncate(keep * layout.page_size)
    return {n for _, n, _, _ in layout.pages if n > keep}


def _write_garbage(path: Path, layout: Layout, page: int) -> None:
    with path.open("r+b") as f:
        f.seek((page - 1) * layout.page_size)
        f.write(GARBAGE[: layout.page_size])


def _garbage_at(fraction: float) -> Callable[[Path, Layout, str], set[int]]:
    def apply(path: Path, layout: Layout, table: str) -> set[int]:
        page = layout.leaf_at(table, fraction)
        _write_garbage(path, layout, page)
        return {page}

    return apply


def _empty(path: Path, layout: Layout, table: str) -> None:
    path.write_bytes(b"")


def _not_sqlite(path: Path, layout: Layout, table: str) -> None:
    path.write_text("# a TOML file written over the database by mistake\nversion = 1\n" * 50)


DAMAGES = [
    Damage("truncated-to-half", _truncate_half),
    Damage("garbage-at-50%", _garbage_at(0.5)),
    Damage("garbage-at-80%", _garbage_at(0.8)),
    Damage("zero-length", _empty),
    Damage("not-sqlite", _not_sqlite),
]


def _counted(recovered: int, total: int | None, items: str) -> str:
    if total is not None:
        return f"{recovered} of {total} {items} recovered"
    if recovered:
        return f"{recovered} {items} recovered (how many were lost is not known)"
    return f"no {items} could be recovered"


@pytest.mark.parametrize("damage", DAMAGES, ids=[d.name for d in DAMAGES])
@pytest.mark.parametrize("kind", KINDS, ids=[k.name for k in KINDS])
def test_a_damaged_store_is_moved_aside_salvaged_and_reopens(
    tmp_path: Path, kind: Kind, damage: Damage
) -> None:
    path = tmp_path / f"{kind.name}.sqlite3"
    kind.fill(path)
    layout = _layout(path)
    originals = _rows(path, kind.table)
    damaged_pages = damage.apply(path, layout, kind.table)
    damaged_bytes = path.read_bytes()
    readable, total = layout.expected(kind.table, damaged_pages)

    store = kind.open(path)

    report = store.heal_report
    assert report is not None
    # Kept aside, byte for byte, next to the fresh file; nothing else holds its old name.
    assert report.path == path
    assert report.moved_to.parent == tmp_path
    assert report.moved_to.name.startswith(f"{path.name}.damaged-20")
    assert report.moved_to.read_bytes() == damaged_bytes
    assert not (tmp_path / f"{report.moved_to.name}-wal").exists()  # read without writing beside it
    # Every readable row, exactly as it was; nothing invented.
    fresh = _rows(path, kind.table)
    assert report.recovered == len(fresh) == readable
    assert set(fresh) <= set(originals)
    assert report.lost == (None if total is None else total - readable)
    assert report.reason() == (
        f"the {kind.store} database was damaged; moved to {report.moved_to}; "
        + _counted(readable, total, kind.items)
    )
    if damaged_pages is None:
        assert report.recovered == 0
    else:
        assert 0 < report.recovered < len(originals)
        assert "malformed" in report.detail
    # The fresh file passes the check: the next start finds nothing to heal.
    again = kind.open(path)
    assert again.heal_report is None
    for opened in (store, again):
        if isinstance(opened, JobStore):
            opened.close()
    assert sorted(p.name for p in tmp_path.iterdir() if ".damaged-" in p.name) == [
        report.moved_to.name
    ]


def test_a_shared_file_carries_the_other_store_s_rows(tmp_path: Path) -> None:
    # The runtime keeps learned strategies and calibration in one file (vram.sqlite3): the store
    # that opens it first heals it for both.
    path = tmp_path / "vram.sqlite3"
    _fill_strategies(path)
    _fill_peaks(path)
    layout = _layout(path)
    peaks = _rows(path, "memory_peaks")
    page = layout.leaf_at("learned_strategies", 0.5)
    readable, _ = layout.expected("learned_strategies", {page})
    _write_garbage(path, layout, page)

    strategies = LearnedStrategies(path)
    report = strategies.heal_report
    assert report is not None
    assert report.recovered == len(strategies.all()) == readable
    assert report.detail.endswith(f"; also carried memory_peaks: {len(peaks)} of {len(peaks)} rows")
    calibration = CalibrationStore(path, window=1000)
    assert calibration.heal_report is None
    assert _rows(path, "memory_peaks") == peaks
    assert len(calibration.samples("tiny-wan-" + "p" * 60, "cpu")) == len(peaks)


def test_jobs_only_in_the_wal_are_carried_and_the_wal_moves_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    _fill_jobs(path)
    layout = _layout(path)
    # A server accepts 5 more jobs and dies (no close, so no checkpoint): they are in the WAL only.
    dead_server = (
        "import os, sys\n"
        "from supervisor.jobs.job_store import JobStore\n"
        "from tests.test_store_heal import _job\n"
        "store = JobStore(sys.argv[1])\n"
        "for i in range(60, 65):\n"
        "    store.submit(_job(i))\n"
        "os._exit(0)\n"
    )
    subprocess.run(
        [sys.executable, "-c", dead_server, str(path)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True, timeout=120,
    )  # fmt: skip
    wal = Path(f"{path}-wal")
    wal_bytes = wal.read_bytes()
    assert wal_bytes
    # The first leaf (jobs 1-8) is not in the WAL: garbage there is damage the check sees.
    first_leaf = min(n for n, _ in layout.leaves("jobs"))
    lost = dict(layout.leaves("jobs"))[first_leaf]
    _write_garbage(path, layout, first_leaf)

    store = JobStore(path)
    report = store.heal_report
    assert report is not None
    assert Path(f"{report.moved_to}-wal").read_bytes() == wal_bytes
    assert Path(f"{report.moved_to}-shm").exists()
    ids = {job.id for job in store.list(limit=100)}
    assert {f"j{i:04d}" for i in range(60, 65)} <= ids
    assert report.recovered == len(ids) == 65 - lost
    assert report.reason().endswith(f"; {65 - lost} of 65 jobs recovered")
    store.close()


def test_damage_while_running_is_a_catalogued_error_and_heals_at_the_next_start(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.sqlite3"
    store = JobStore(path)
    for i in range(60):
        store.submit(_job(i))
    with closing(sqlite3.connect(path)) as other:  # the pages leave the WAL for the main file...
        other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with path.open("r+b") as f:  # ...which is then cut in half under the running server
        f.truncate(path.stat().st_size // 2)

    with pytest.raises(StoreCorrupted) as info:
        store.list(limit=100)
    assert store.damage is info.value
    assert info.value.path == path
    with pytest.raises(StoreCorrupted):
        store.submit(_job(99))
    assert store.damage is info.value  # the first one is kept
    report = ErrorReport.from_exception(info.value, stage=Stage.API)
    verdict = default_categorizer().categorize(report)
    assert (verdict.code, verdict.category) == (ErrorCode.STORE_CORRUPTED, Category.FILE_SYSTEM)
    assert not verdict.recoverable
    user = explain(report, verdict)
    assert str(path) in user.message
    assert user.suggestions[0].startswith(f"Restart genvisor: at start it checks {path}")
    assert f"{path}.damaged-" in user.suggestions[1]
    store.close()

    healed = JobStore(path)
    assert healed.heal_report is not None
    assert 0 < healed.heal_report.recovered < 60
    assert len(healed.list(limit=100)) == healed.heal_report.recovered
    healed.close()


def test_moving_aside_never_overwrites_an_earlier_damaged_copy(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    moved = []
    for n in range(2):
        path.write_bytes(b"damaged %d" % n)
        Path(f"{path}-wal").write_bytes(b"wal %d" % n)
        moved.append(move_aside(path, now=1_796_000_000.0))  # the same second twice
    assert moved[0].name == "jobs.sqlite3.damaged-20261130T005320"
    assert moved[1].name == "jobs.sqlite3.damaged-20261130T005320-2"
    assert [m.read_bytes() for m in moved] == [b"damaged 0", b"damaged 1"]
    assert [Path(f"{m}-wal").read_bytes() for m in moved] == [b"wal 0", b"wal 1"]
    assert not path.exists()


def _captured(exc: BaseException) -> ErrorReport:
    # Reports cross process boundaries as JSON: categorize what arrives.
    return ErrorReport.model_validate_json(ErrorReport.from_exception(exc).model_dump_json())


def test_real_sqlite_errors_are_categorized(tmp_path: Path) -> None:
    categorizer = default_categorizer()
    with pytest.raises(sqlite3.DatabaseError, match="malformed") as malformed:
        raise sqlite3.DatabaseError("database disk image is malformed")
    verdict = categorizer.categorize(_captured(malformed.value))
    assert (verdict.code, verdict.category) == (ErrorCode.STORE_CORRUPTED, Category.FILE_SYSTEM)
    assert verdict.rule == "type:sqlite3.DatabaseError"

    # Raised by SQLite itself: a page of garbage, and a file that is not a database.
    path = tmp_path / "jobs.sqlite3"
    _fill_jobs(path)
    layout = _layout(path)
    _write_garbage(path, layout, layout.leaf_at("jobs", 0.5))
    with closing(sqlite3.connect(path)) as db, pytest.raises(sqlite3.DatabaseError) as real:
        db.execute("SELECT * FROM jobs").fetchall()
    assert "malformed" in str(real.value)
    assert categorizer.categorize(_captured(real.value)).code is ErrorCode.STORE_CORRUPTED
    path.write_text("not a database\n" * 100)
    with closing(sqlite3.connect(path)) as db, pytest.raises(sqlite3.DatabaseError) as not_db:
        db.execute("PRAGMA journal_mode=WAL")
    assert categorizer.categorize(_captured(not_db.value)).code is ErrorCode.STORE_CORRUPTED

    # A locked database is no damage: it is not called one.
    locked_path = tmp_path / "locked.sqlite3"
    with closing(sqlite3.connect(locked_path, isolation_level=None)) as holder:
        holder.executescript("CREATE TABLE t (x); BEGIN EXCLUSIVE;")
        with closing(sqlite3.connect(locked_path, timeout=0)) as db:
            with pytest.raises(sqlite3.OperationalError, match="locked") as locked:
                db.execute("SELECT * FROM t").fetchall()
    assert categorizer.categorize(_captured(locked.value)).code is not ErrorCode.STORE_CORRUPTED
    # The same class says other things too; the words decide.
    full = sqlite3.OperationalError("database or disk is full")
    assert categorizer.categorize(_captured(full)).code is ErrorCode.FS_DISK_FULL
    failing = sqlite3.OperationalError("disk I/O error")
    assert categorizer.categorize(_captured(failing)).code is ErrorCode.FS_IO_ERROR

    # Pasted as text (`genvisor explain`), the words decide.
    pasted = ErrorReport.from_text("sqlite3.DatabaseError: database disk image is malformed")
    assert categorizer.categorize(pasted).code is ErrorCode.STORE_CORRUPTED
    words = ErrorReport(exc_type="", message="Error: file is not a database")
    assert categorizer.categorize(words).code is ErrorCode.STORE_CORRUPTED


def test_a_damaged_knowledge_store_is_skipped_while_running_and_said(tmp_path: Path) -> None:
    # Learned strategies and calibration are knowledge, not work: a job goes on without them
    # (`tolerate`), while the store keeps the damage for /readyz and heals at the next start.
    path = tmp_path / "vram.sqlite3"
    store = LearnedStrategies(path)
    keys = [StrategyKey(f"model-{i:04d}-" + "w" * 100, "cpu", 2048, i % 40) for i in range(300)]
    for key in keys:
        store.remember(key, RungId.VAE_TILING)
    with closing(sqlite3.connect(path)) as other:
        other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)
    found = [tolerate(lambda k=k: store.lookup(k), None, what="learned strategy") for k in keys]
    assert store.damage is not None  # kept for /readyz
    assert None in found  # the rows on the cut pages are simply not known any more
    tolerate(lambda: store.remember(keys[0], RungId.VAE_TILING), None, what="learning a rung")
    store.close()
    healed = LearnedStrategies(path)
    assert healed.heal_report is not None
    healed.close()
