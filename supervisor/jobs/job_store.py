"""The durable job store: SQLite in WAL mode in the data directory.

Invariants: a job is committed before `submit` returns (so before the API answers 202);
the queue order is (priority desc, created asc, rowid asc); start-up turns every job left
`running` or `retrying` by a dead server into `interrupted` and queues it again.

Damage: the file is checked at open (`PRAGMA quick_check`); a damaged file is moved aside and
every readable job carried into a fresh one (supervisor/core/sqlite_salvage.py), and
`heal_report` says so. A corruption error while running becomes `StoreCorrupted` (code
`STORE.CORRUPTED`), and the first one is kept in `damage`; the file heals at the next start.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path
from typing import Any

from supervisor.core.sqlite_salvage import SalvageSpec, corruption_guard, open_healed
from supervisor.core.store_health import StoreCorrupted, StoreHealReport
from supervisor.jobs.job import TERMINAL, Job, JobStatus

__all__ = ["JobStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    rowid INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    model TEXT NOT NULL,
    params TEXT NOT NULL,
    options TEXT NOT NULL,
    allow_output_changes INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    status TEXT NOT NULL,
    created_ts REAL NOT NULL,
    started_ts REAL,
    finished_ts REAL,
    attempts INTEGER NOT NULL,
    crash_retries INTEGER NOT NULL,
    rungs_tried TEXT NOT NULL,
    changes TEXT NOT NULL,
    decode_only_from TEXT,
    output_path TEXT,
    requested TEXT,
    result TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (status, priority DESC, created_ts, rowid);
"""

_COLUMNS = (
    "id model params options allow_output_changes priority status created_ts started_ts "
    "finished_ts attempts crash_retries rungs_tried changes decode_only_from output_path "
    "requested result error"
).split()


def _check_row(row: dict[str, object]) -> object:
    return Job.from_row(row)  # raises for a row salvage must not carry (garbled JSON, status)


_SALVAGE = SalvageSpec(
    store="jobs", items="jobs", schema=_SCHEMA, table="jobs", check_row=_check_row
)


class JobStore:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        # The first corruption met while running; the file heals at the next start.
        self.damage: StoreCorrupted | None = None
        # Set when the file was damaged at open (moved aside, salvaged): the server serves
        # DEGRADED with `heal_report.reason()`.
        self.heal_report: StoreHealReport | None
        self._db, self.heal_report = open_healed(self.path, _SALVAGE, self._open)

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: every commit survives a crash or kill of the process; only the
            # acceptance of a job (`submit`) is also made to survive a power cut (FULL, below).
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
        except BaseException:
            db.close()  # closed before the file may be moved aside
            raise
        return db

    def _seen(self, damage: StoreCorrupted) -> None:
        if self.damage is None:
            self.damage = damage

    def _guard(self) -> AbstractContextManager[None]:
        return corruption_guard("jobs", self.path, self._seen)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock, self._guard():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                # Invariant: no transaction outlives a failure (a failed COMMIT included), so the
                # next call can BEGIN. SQLite rolls back by itself after some errors (corruption,
                # I/O, full disk); a ROLLBACK then fails and must not hide the error's cause.
                if self._db.in_transaction:
                    with suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- writes ---------------------------------------------------------------------------------

    def submit(self, job: Job) -> Job:
        row = job.to_row()
        with self._lock, self._guard():
            self._db.execute("PRAGMA synchronous=FULL")
        try:
            self._insert(row)
        finally:
            with self._lock, self._guard():
                self._db.execute("PRAGMA synchronous=NORMAL")
        return job

    def _insert(self, row: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                f"INSERT INTO jobs ({', '.join(_COLUMNS)}) "
                f"VALUES ({', '.join(':' + c for c in _COLUMNS)})",
                row,
            )

    def save(self, job: Job) -> None:
        row = job.to_row()
        sets = ", ".join(f"{c} = :{c}" for c in _COLUMNS if c != "id")
        with self._tx() as db:
            db.execute(f"UPDATE jobs SET {sets} WHERE id = :id", row)

    def recover_interrupted(self) -> list[Job]:
        """Start-up: jobs a dead server left running are marked interrupted and queued again."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT * FROM jobs WHERE status IN (?, ?, ?) ORDER BY rowid",
                (JobStatus.RUNNING, JobStatus.RETRYING, JobStatus.INTERRUPTED),
            ).fetchall()
            jobs = [Job.from_row(dict(r)) for r in rows]
            for job in jobs:
                job.status = JobStatus.INTERRUPTED
                db.execute(
                    "UPDATE jobs SET status = ? WHERE id = ?", (JobStatus.INTERRUPTED, job.id)
                )
        return jobs

    def purge_finished(self, older_than_s: float, now: float | None = None) -> int:
        cutoff = (now if now is not None else time.time()) - older_than_s
        marks = ",".join("?" * len(TERMINAL))
        with self._tx() as db:
            cur = db.execute(
                f"DELETE FROM jobs WHERE status IN ({marks}) AND finished_ts < ?",
                (*[s.value for s in TERMINAL], cutoff),
            )
        return cur.rowcount

    def finished_before(self, ts: float) -> list[Job]:
        marks = ",".join("?" * len(TERMINAL))
        rows = self._query(
            f"SELECT * FROM jobs WHERE status IN ({marks}) AND finished_ts < ?",
            (*[s.value for s in TERMINAL], ts),
        )
        return [Job.from_row(dict(r)) for r in rows]

    # -- reads ----------------------------------------------------------------------------------

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock, self._guard():
            return self._db.execute(sql, args).fetchall()

    def get(self, job_id: str) -> Job | None:
        rows = self._query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return Job.from_row(dict(rows[0])) if rows else None

    def next_queued(self) -> Job | None:
        rows = self._query(
            "SELECT * FROM jobs WHERE status IN (?, ?, ?) "
            "ORDER BY priority DESC, created_ts, rowid LIMIT 1",
            (JobStatus.QUEUED, JobStatus.RETRYING, JobStatus.INTERRUPTED),
        )
        return Job.from_row(dict(rows[0])) if rows else None

    def list(
        self, *, status: JobStatus | None = None, limit: int = 50, offset: int = 0
    ) -> list[Job]:
        if status is None:
            rows = self._query(
                "SELECT * FROM jobs ORDER BY rowid DESC LIMIT ? OFFSET ?", (limit, offset)
            )
        else:
            rows = self._query(
                "SELECT * FROM jobs WHERE status = ? ORDER BY rowid DESC LIMIT ? OFFSET ?",
                (status.value, limit, offset),
            )
        return [Job.from_row(dict(r)) for r in rows]

    def counts(self) -> dict[str, int]:
        rows = self._query("SELECT status, COUNT(*) FROM jobs GROUP BY status")
        counts = {s.value: 0 for s in JobStatus}
        counts.update({r[0]: r[1] for r in rows})
        return counts

    def waiting(self) -> int:
        rows = self._query(
            "SELECT COUNT(*) FROM jobs WHERE status IN (?, ?, ?)",
            (JobStatus.QUEUED, JobStatus.RETRYING, JobStatus.INTERRUPTED),
        )
        return int(rows[0][0])

    def queue_position(self, job_id: str) -> int | None:
        """1-based position among waiting jobs, or None when it is not waiting."""
        job = self.get(job_id)
        if job is None or job.status not in (
            JobStatus.QUEUED,
            JobStatus.RETRYING,
            JobStatus.INTERRUPTED,
        ):
            return None
        rows = self._query(
            "SELECT COUNT(*) FROM jobs WHERE status IN (?, ?, ?) AND "
            "(priority > ? OR (priority = ? AND created_ts < ?) OR "
            "(priority = ? AND created_ts = ? AND rowid < (SELECT rowid FROM jobs WHERE id = ?)))",
            (
                JobStatus.QUEUED,
                JobStatus.RETRYING,
                JobStatus.INTERRUPTED,
                job.priority,
                job.priority,
                job.created_ts,
                job.priority,
                job.created_ts,
                job_id,
            ),
        )
        return int(rows[0][0]) + 1
