"""The durable job store: SQLite in WAL mode in the data directory, and its face for the loop.

Invariants: a job is committed and synced before the API answers 202 (`submit`, or `accept`
then `make_durable`, whose sync runs while the job is already visible and may start);
the queue order is (priority desc, created asc, rowid asc); start-up turns every job left
`running` or `retrying` by a dead server into `interrupted` and queues it again.

Off the loop: `JobStore` is synchronous and thread-safe (one lock per store); the control
process's event loop reaches it only through `AsyncJobStore`, which runs each call on a worker
thread behind a `CapacityLimiter(1)` of its own: one thread at a time per database, so a slow
disk or a long write blocks only the tasks that wait on the store, never heartbeats, the
watchdog or `/healthz`. The limiter is FIFO and every caller awaits its call, so calls run in
the order they are made (`test_job_store_order.py` checks both faces). A caller cancelled while
its call runs waits for the call to finish (the thread is never abandoned): a write is done or
not, never lost in between.

Damage: the file is checked at open (`PRAGMA quick_check`); a damaged file is moved aside and
every readable job carried into a fresh one (supervisor/core/sqlite_salvage.py), and
`heal_report` says so. A corruption error while running becomes `StoreCorrupted` (code
`STORE.CORRUPTED`), and the first one is kept in `damage`; the file heals at the next start.
"""

from __future__ import annotations

import builtins
import os
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

from supervisor.core.params import JobInputs
from supervisor.core.sqlite_salvage import SalvageSpec, corruption_guard, open_healed
from supervisor.core.store_health import StoreCorrupted, StoreHealReport
from supervisor.jobs.job import TERMINAL, Job, JobStatus

__all__ = ["AsyncJobStore", "JobStore"]

T = TypeVar("T")

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
    error TEXT,
    inputs TEXT
);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (status, priority DESC, created_ts, rowid);
"""

_COLUMNS = (
    "id model params options allow_output_changes priority status created_ts started_ts "
    "finished_ts attempts crash_retries rungs_tried changes decode_only_from output_path "
    "requested result error inputs"
).split()
_INSERT = (
    f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({', '.join(':' + c for c in _COLUMNS)})"
)
_UPDATE = (
    f"UPDATE jobs SET {', '.join(f'{c} = :{c}' for c in _COLUMNS if c != 'id')} WHERE id = :id"
)
# The statuses `next_queued` hands out, in the order of the `IN (?, ?, ?)` of the queries.
_WAITING = (JobStatus.QUEUED, JobStatus.RETRYING, JobStatus.INTERRUPTED)
_NEXT_QUEUED = (
    "SELECT * FROM jobs WHERE status IN (?, ?, ?) ORDER BY priority DESC, created_ts, rowid LIMIT 1"
)


def _select_job(db: sqlite3.Connection, job_id: str) -> sqlite3.Row | None:
    row: sqlite3.Row | None = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return row


def _check_row(row: dict[str, object]) -> object:
    return Job.from_row(row)  # raises for a row salvage must not carry (garbled JSON, status)


_SALVAGE = SalvageSpec(
    store="jobs", items="jobs", schema=_SCHEMA, table="jobs", check_row=_check_row
)


class JobStore:
    def __init__(self, path: Path | str, *, fsync: Callable[[int], None] = os.fsync) -> None:
        """`fsync`: how `make_durable` syncs a file descriptor (tests inject a recorder)."""
        self.path = Path(path)
        self._fsync = fsync
        self._lock = threading.Lock()
        # The first corruption met while running; the file heals at the next start.
        self.damage: StoreCorrupted | None = None
        # Set when the file was damaged at open (moved aside, salvaged): the server serves
        # DEGRADED with `heal_report.reason()`.
        self.heal_report: StoreHealReport | None
        self._db, self.heal_report = open_healed(self.path, _SALVAGE, self._open)
        # Writes begun on this store (each counts before it starts, under the lock), and (the
        # count then, the first waiting row or None when none waited) as the last accept or
        # save saw it in its own transaction: see `known_next`.
        self._writes = 0
        self._first_waiting: tuple[int, sqlite3.Row | None] | None = None
        # Whether the folder entry of the WAL file has been synced by `make_durable`.
        self._dir_synced = False

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            # Where the journal could not be WAL (a file system without shared memory), an
            # acceptance is made durable by its own FULL commit (see `accept`).
            self._wal = str(mode).lower() == "wal"
            # NORMAL in WAL mode: every commit survives a crash or kill of the process; only the
            # acceptance of a job (`submit`) is also made to survive a power cut (FULL, below).
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            # Files written before jobs could carry images (issue 15) lack the column.
            columns = {row[1] for row in db.execute("PRAGMA table_info(jobs)")}
            if "inputs" not in columns:
                db.execute("ALTER TABLE jobs ADD COLUMN inputs TEXT")
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
            self._writes += 1
            with self._transaction() as db:
                yield db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One transaction; the caller holds `_lock` and the corruption guard."""
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
            self._first_waiting = None  # a closed store answers nothing from memory either
            self._db.close()

    # -- writes ---------------------------------------------------------------------------------

    def submit(self, job: Job) -> Job:
        self._accept(job, place=False)
        return job

    def submit_and_place(self, job: Job) -> int | None:
        """`submit`, and the job's queue position (as `queue_position`) counted in the same
        transaction, under the same lock: no other write can come between."""
        return self._accept(job, place=True)

    def accept(self, job: Job) -> int | None:
        """Commit the job, visible to every later call, and return its queue position; it
        survives a crash or kill of the process at once, and a power cut once `make_durable`
        has returned (which the API waits for before 202). Without WAL (see `_open`) the
        commit is FULL and `make_durable` has nothing left to do."""
        return self._accept(job, place=True, durable=not self._wal)

    def make_durable(self) -> None:
        """Every commit so far survives a power cut: the WAL file is synced, as SQLite's
        synchronous=FULL syncs it at a commit. Runs beside the store's calls (it takes no
        lock): a job waits for the disk only to be acknowledged, not to be started.

        Invariant: the frames of a commit are in the WAL file until a checkpoint has copied them
        into the database file, and under synchronous=NORMAL a checkpoint syncs the WAL before
        copying and the database after; so a sync of the WAL at any time after the commit,
        or its absence (checkpointed and truncated), leaves the commit durable."""
        if not self._wal:
            return
        wal = Path(f"{self.path}-wal")
        try:
            fd = os.open(wal, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            self._fsync(fd)
        finally:
            os.close(fd)
        if not self._dir_synced:
            # Once: the WAL file's entry in its folder (SQLite syncs it with a FULL commit too).
            folder = os.open(self.path.parent, os.O_RDONLY)
            try:
                self._fsync(folder)
            finally:
                os.close(folder)
            self._dir_synced = True

    def _accept(self, job: Job, *, place: bool, durable: bool = True) -> int | None:
        # Invariant (durability): the accepting commit alone is made to survive a power cut
        # before the API answers 202: with synchronous=FULL here (`submit`, or `accept` without
        # WAL), or by `make_durable` syncing the WAL after a NORMAL commit (`accept`). Every
        # later write of the row (running, the outcome) commits with NORMAL: under WAL it
        # survives a crash or kill of the process; a power cut may take the row back to an
        # earlier status (the WAL keeps commits in order), never before this insert: a job back
        # at `queued` waits again, one back at `running` is queued again by start-up
        # (`recover_interrupted`), so an accepted job is never lost. One lock turn for the
        # pragmas, the insert and the position.
        row = job.to_row()
        with self._lock, self._guard():
            self._writes += 1
            if durable:
                self._db.execute("PRAGMA synchronous=FULL")
            try:
                with self._transaction() as db:
                    db.execute(_INSERT, row)
                    position = self._position(job) if place else None
                    first = _select_job(db, job.id) if position == 1 else None
            finally:
                if durable:
                    self._db.execute("PRAGMA synchronous=NORMAL")
            self._first_waiting = (self._writes, first) if first is not None else None
        return position

    def save(self, job: Job) -> None:
        self.save_row(job.to_row())

    def save_row(self, row: dict[str, Any]) -> None:
        """`save` of a row taken earlier (`Job.to_row`), e.g. on the loop before a thread hop.
        The first waiting job is read in the same transaction: the dispatch that follows a
        job's start or end then asks no thread (`known_next`)."""
        with self._tx() as db:
            db.execute(_UPDATE, row)
            first = db.execute(_NEXT_QUEUED, _WAITING).fetchone()
            self._first_waiting = (self._writes, first)

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

    def input_ids(self) -> set[str]:
        """Every input id a job in the store names (inputs live as long as their jobs)."""
        rows = self._query("SELECT inputs FROM jobs WHERE inputs IS NOT NULL")
        ids: set[str] = set()
        for (raw,) in rows:
            inputs = JobInputs.model_validate_json(raw)
            ids.update(i for i in (inputs.image, inputs.last_image) if i is not None)
        return ids

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

    def known_next(self) -> tuple[bool, Job | None]:
        """(True, `next_queued`'s answer) when it is known without reading the file, else
        (False, None).

        Invariant: the last accept or save read the first waiting job (or that none waited)
        in its own transaction, and no write has begun since (`_writes` is unchanged), so the
        file holds what it held then: `next_queued` would read that very row. A fresh `Job`
        each call, as from `next_queued` (callers change the job they get). Reads no SQLite
        and takes no lock: the tuple and the count are each read whole, the tuple first, so a
        write begun in between shows as a changed count."""
        first = self._first_waiting
        if first is None or first[0] != self._writes or self.damage is not None:
            return False, None
        return True, Job.from_row(dict(first[1])) if first[1] is not None else None

    def next_queued(self) -> Job | None:
        rows = self._query(_NEXT_QUEUED, _WAITING)
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
        if job is None:
            return None
        with self._lock, self._guard():
            return self._position(job)

    def _position(self, job: Job) -> int | None:
        """`queue_position` of a job as stored; the caller holds `_lock` and the guard."""
        if job.status not in _WAITING:
            return None
        row = self._db.execute(
            "SELECT COUNT(*) FROM jobs WHERE status IN (?, ?, ?) AND "
            "(priority > ? OR (priority = ? AND created_ts < ?) OR "
            "(priority = ? AND created_ts = ? AND rowid < (SELECT rowid FROM jobs WHERE id = ?)))",
            (
                *_WAITING,
                job.priority,
                job.priority,
                job.created_ts,
                job.priority,
                job.created_ts,
                job.id,
            ),
        ).fetchone()
        return int(row[0]) + 1


class AsyncJobStore:
    """The same operations as `JobStore`, awaited on the store's thread; `sync` is the store
    itself, for synchronous callers that accept a blocking read (tests, the metrics collector)."""

    def __init__(self, store: JobStore) -> None:
        self.sync = store
        # Created lazily by anyio on first use (bound to the loop that uses it).
        self._limiter = anyio.CapacityLimiter(1)

    @classmethod
    def open(cls, path: Path | str) -> AsyncJobStore:
        return cls(JobStore(path))

    async def _run(self, call: Callable[[], T]) -> T:
        return await anyio.to_thread.run_sync(call, limiter=self._limiter)

    # -- what the runtime's health checks read (no SQLite: plain attributes) --------------------

    @property
    def path(self) -> Path:
        return self.sync.path

    @property
    def damage(self) -> StoreCorrupted | None:
        return self.sync.damage

    @property
    def heal_report(self) -> StoreHealReport | None:
        return self.sync.heal_report

    # -- writes ---------------------------------------------------------------------------------

    async def submit(self, job: Job) -> Job:
        """Returns once the job is committed and synced (durable before anyone is told)."""
        return await self._run(lambda: self.sync.submit(job))

    async def submit_and_place(self, job: Job) -> int | None:
        """`submit`, then the job's queue position, in one turn of the thread (one hop)."""
        return await self._run(lambda: self.sync.submit_and_place(job))

    async def accept(self, job: Job) -> int | None:
        """`JobStore.accept` on the store's thread: committed and visible, not yet synced."""
        return await self._run(lambda: self.sync.accept(job))

    async def make_durable(self) -> None:
        """`JobStore.make_durable` on a thread of its own, beside the store's calls."""
        await anyio.to_thread.run_sync(self.sync.make_durable)

    async def save(self, job: Job) -> None:
        # Invariant: the row is taken on the loop, before the hop: the thread never reads a job
        # the loop may be changing meanwhile (the running job's progress, say).
        row_of = job.to_row()
        await self._run(lambda: self.sync.save_row(row_of))

    @asynccontextmanager
    async def saving(self, job: Job, *, even_on_error: bool = False) -> AsyncIterator[None]:
        """`save(job)`, with the body run after the write is placed in the store's order and
        before it is carried out: the body may tell others of the row (the generator, the
        bus) without waiting for the disk, and every store call made after it (a client's
        GET, the job's outcome) still sees the row, as the store's thread takes calls in turn.

        Invariant: the store's token is taken before the body runs, with no turn of the loop
        when it is free (`acquire_nowait`); the write runs in a thread after the body and
        the token is given back after the write, whatever happens. A body that raises cancels
        the write (a job the generator would not take stays as it was), unless `even_on_error`
        (an outcome is written even when telling of it failed)."""
        row_of = job.to_row()
        limiter = self._limiter
        try:
            limiter.acquire_nowait()
        except anyio.WouldBlock:
            await limiter.acquire()
        try:
            try:
                yield
            except BaseException:
                if even_on_error:
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(lambda: self.sync.save_row(row_of))
                raise
            await anyio.to_thread.run_sync(lambda: self.sync.save_row(row_of))
        finally:
            limiter.release()

    async def recover_interrupted(self) -> builtins.list[Job]:
        return await self._run(self.sync.recover_interrupted)

    async def purge_finished(self, older_than_s: float, now: float | None = None) -> int:
        return await self._run(lambda: self.sync.purge_finished(older_than_s, now))

    async def input_ids(self) -> set[str]:
        return await self._run(self.sync.input_ids)

    async def finished_before(self, ts: float) -> builtins.list[Job]:
        return await self._run(lambda: self.sync.finished_before(ts))

    async def close(self) -> None:
        await self._run(self.sync.close)

    # -- reads ----------------------------------------------------------------------------------

    async def get(self, job_id: str) -> Job | None:
        return await self._run(lambda: self.sync.get(job_id))

    async def next_queued(self) -> Job | None:
        # One hop fewer per job (the supervisor asks right after each acceptance): with no call
        # running on or waiting for the store's thread, the thread would run `next_queued` at
        # once, on the state `known_next` vouches for, so answering here keeps both the answer
        # and the order of calls.
        await anyio.lowlevel.checkpoint()
        limiter = self._limiter
        if limiter.borrowed_tokens == 0 and limiter.statistics().tasks_waiting == 0:
            known, job = self.sync.known_next()
            if known:
                return job
        return await self._run(self.sync.next_queued)

    async def list(
        self, *, status: JobStatus | None = None, limit: int = 50, offset: int = 0
    ) -> builtins.list[Job]:
        return await self._run(lambda: self.sync.list(status=status, limit=limit, offset=offset))

    async def counts(self) -> dict[str, int]:
        return await self._run(self.sync.counts)

    async def waiting(self) -> int:
        return await self._run(self.sync.waiting)

    async def queue_position(self, job_id: str) -> int | None:
        return await self._run(lambda: self.sync.queue_position(job_id))

    async def queue_positions(self, job_ids: builtins.list[str]) -> dict[str, int | None]:
        """Several positions in one turn (a page of jobs costs one thread hop)."""
        return await self._run(lambda: {i: self.sync.queue_position(i) for i in job_ids})
