"""A job is committed (visible, it survives a kill) before the supervisor hears of it, and synced
(it survives a power cut) before `Runtime.submit` returns and the API answers 202: the sync of
the WAL runs beside the store's calls, so a job starts while its acknowledgement waits for the
disk. Real SQLite files; the file descriptors synced are recorded by an injected `fsync` that
also syncs them."""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from pathlib import Path

import anyio
import pytest

from supervisor.core.params import GenerationParams
from supervisor.jobs import AsyncJobStore, Job, JobStatus, JobStore

PARAMS = GenerationParams(prompt="a boat", width=32, height=32, num_frames=5, steps=2)


class RecordingFsync:
    """os.fsync, and the path of every descriptor it synced (from /proc/self/fd)."""

    def __init__(self) -> None:
        self.synced: list[Path] = []

    def __call__(self, fd: int) -> None:
        self.synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        os.fsync(fd)


def _job(name: str) -> Job:
    return Job(id=name, model="tiny-wan", params=PARAMS, created_ts=1.0)


def test_an_accepted_job_is_visible_at_once_and_synced_by_make_durable(tmp_path: Path) -> None:
    fsync = RecordingFsync()
    path = tmp_path / "jobs.sqlite3"
    store = JobStore(path, fsync=fsync)
    assert store.accept(_job("a")) == 1
    # Committed: another connection (another process would do the same) reads it already.
    with closing(sqlite3.connect(path)) as other:
        assert other.execute("SELECT status FROM jobs WHERE id = 'a'").fetchone() == ("queued",)
    assert fsync.synced == []  # the commit itself did not wait for the disk
    store.make_durable()
    assert fsync.synced == [Path(f"{path}-wal").resolve(), tmp_path.resolve()]
    store.accept(_job("b"))
    store.make_durable()
    # The folder's entry of the WAL file is synced once; the WAL at every acceptance.
    assert fsync.synced[2:] == [Path(f"{path}-wal").resolve()]
    store.close()


def test_a_checkpointed_wal_leaves_nothing_to_sync(tmp_path: Path) -> None:
    fsync = RecordingFsync()
    path = tmp_path / "jobs.sqlite3"
    store = JobStore(path, fsync=fsync)
    store.accept(_job("a"))
    store.close()  # the last connection checkpoints into the database file and drops the WAL
    assert not Path(f"{path}-wal").exists()
    store.make_durable()
    assert fsync.synced == []
    with closing(sqlite3.connect(path)) as other:
        assert other.execute("SELECT count(*) FROM jobs").fetchone() == (1,)


@pytest.mark.anyio
async def test_the_store_goes_on_while_the_disk_syncs(tmp_path: Path) -> None:
    """make_durable holds no lock and no turn of the store's thread: a dispatch's reads and
    writes of the same job run while an acknowledgement still waits for its sync."""
    syncing = anyio.Event()
    release = anyio.Event()
    def slow_fsync(fd: int) -> None:
        anyio.from_thread.run_sync(syncing.set)
        anyio.from_thread.run(release.wait)
        os.fsync(fd)

    store = AsyncJobStore(JobStore(tmp_path / "jobs.sqlite3", fsync=slow_fsync))
    job = _job("a")
    with anyio.fail_after(10):
        assert await store.accept(job) == 1
        async with anyio.create_task_group() as tg:
            tg.start_soon(store.make_durable)
            await syncing.wait()
            running = await store.next_queued()
            assert running is not None
            assert running.id == "a"
            running.status = JobStatus.RUNNING
            await store.save(running)
            stored = await store.get("a")
            assert stored is not None
            assert stored.status is JobStatus.RUNNING
            release.set()
    await store.close()


@pytest.mark.anyio
async def test_a_row_told_of_before_it_is_written_is_read_after_the_write(tmp_path: Path) -> None:
    """`saving`: the row's place in the store's order is taken before the body tells anyone;
    a read asked for during the body runs after the write."""
    store = AsyncJobStore(JobStore(tmp_path / "jobs.sqlite3"))
    job = _job("a")
    with anyio.fail_after(10):
        await store.accept(job)
        job.status = JobStatus.RUNNING
        seen: list[JobStatus] = []

        async def read() -> None:
            got = await store.get("a")
            assert got is not None
            seen.append(got.status)

        async with anyio.create_task_group() as tg:
            async with store.saving(job):
                tg.start_soon(read)
                await anyio.wait_all_tasks_blocked()
                assert seen == []  # the read waits for the row's write
        assert seen == [JobStatus.RUNNING]
    await store.close()


@pytest.mark.anyio
async def test_a_body_that_fails_cancels_the_write_unless_asked_otherwise(tmp_path: Path) -> None:
    store = AsyncJobStore(JobStore(tmp_path / "jobs.sqlite3"))
    job = _job("a")
    with anyio.fail_after(10):
        await store.accept(job)
        job.status = JobStatus.RUNNING
        with pytest.raises(RuntimeError, match="not taken"):
            async with store.saving(job):
                raise RuntimeError("not taken")
        stored = await store.get("a")
        assert stored is not None
        assert stored.status is JobStatus.QUEUED
        job.status = JobStatus.SUCCEEDED
        with pytest.raises(RuntimeError, match="telling failed"):
            async with store.saving(job, even_on_error=True):
                raise RuntimeError("telling failed")
        stored = await store.get("a")
        assert stored is not None
        assert stored.status is JobStatus.SUCCEEDED
    await store.close()
