"""The job store's queue order and restart recovery, on a real SQLite file (fast, no server),
through the synchronous store and through its worker thread (`AsyncJobStore`)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from supervisor.core.params import GenerationParams
from supervisor.jobs import AsyncJobStore, Job, JobStatus, JobStore

PARAMS = GenerationParams(prompt="a boat", width=32, height=32, num_frames=5, steps=2)


def _job(name: str, *, created: float, priority: int = 0) -> Job:
    return Job(id=name, model="tiny-wan", params=PARAMS, priority=priority, created_ts=created)


def _drain(store: JobStore) -> list[str]:
    order = []
    while (job := store.next_queued()) is not None:
        order.append(job.id)
        job.status = JobStatus.SUCCEEDED
        store.save(job)
    return order


def test_priority_first_then_age_then_arrival(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    for job in (
        _job("old", created=1.0),
        _job("urgent", created=5.0, priority=2),
        _job("tie-a", created=3.0),
        _job("tie-b", created=3.0),  # same timestamp: the one submitted first goes first
        _job("new", created=9.0),
    ):
        store.submit(job)
    assert [store.queue_position(j) for j in ("urgent", "old", "tie-a", "tie-b", "new")] == [
        1, 2, 3, 4, 5,
    ]  # fmt: skip
    assert store.waiting() == 5
    assert _drain(store) == ["urgent", "old", "tie-a", "tie-b", "new"]
    assert store.queue_position("old") is None  # not waiting any more
    assert store.queue_position("missing") is None
    store.close()


def test_a_retry_keeps_its_place_and_running_jobs_come_back_after_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    store = JobStore(path)
    for name, created in (("a", 1.0), ("b", 2.0), ("c", 3.0)):
        store.submit(_job(name, created=created))
    first = store.next_queued()
    assert first is not None
    assert first.id == "a"
    first.status = JobStatus.RUNNING
    store.save(first)
    assert store.next_queued().id == "b"  # type: ignore[union-attr]
    first.status = JobStatus.RETRYING  # an attempt failed: queued again, ahead of later jobs
    store.save(first)
    assert store.next_queued().id == "a"  # type: ignore[union-attr]
    first.status = JobStatus.RUNNING
    store.save(first)
    store.close()  # the server dies with "a" running

    again = JobStore(path)
    assert [j.id for j in again.recover_interrupted()] == ["a"]
    assert again.get("a").status is JobStatus.INTERRUPTED  # type: ignore[union-attr]
    assert _drain(again) == ["a", "b", "c"]
    assert again.counts()["succeeded"] == 3
    again.close()


@pytest.mark.anyio
async def test_through_the_worker_thread_calls_keep_the_order_they_were_made(
    tmp_path: Path,
) -> None:
    store = AsyncJobStore.open(tmp_path / "jobs.sqlite3")
    arrived: list[str] = []

    async def submit(name: str, created: float, priority: int = 0) -> None:
        job = await store.submit(_job(name, created=created, priority=priority))
        arrived.append(job.id)  # committed: durable before the caller goes on

    with anyio.fail_after(10):
        # Started in this order, each waiting its turn on the store's one thread.
        async with anyio.create_task_group() as tg:
            for name, created, priority in (
                ("old", 1.0, 0),
                ("urgent", 5.0, 2),
                ("tie-a", 3.0, 0),
                ("tie-b", 3.0, 0),
                ("new", 9.0, 0),
            ):
                tg.start_soon(submit, name, created, priority)
        assert arrived == ["old", "urgent", "tie-a", "tie-b", "new"]
        assert await store.waiting() == 5
        order = []
        while (job := await store.next_queued()) is not None:
            order.append(job.id)
            job.status = JobStatus.RUNNING
            await store.save(job)
            assert await store.queue_position(job.id) is None  # the write came first
            job.status = JobStatus.SUCCEEDED
            await store.save(job)
        assert order == ["urgent", "old", "tie-a", "tie-b", "new"]
        assert (await store.counts())["succeeded"] == 5
        # Committed, then placed, in one turn of the thread.
        assert await store.submit_and_place(_job("late", created=10.0)) == 1
        await store.close()


@pytest.mark.anyio
async def test_the_job_just_accepted_first_in_line_is_the_next_without_a_read(
    tmp_path: Path,
) -> None:
    # The supervisor asks for the next job right after each acceptance: while nothing was
    # written since, the answer is the accepted row itself (no hop to the thread), and it is
    # exactly what SQLite gives.
    store = AsyncJobStore.open(tmp_path / "jobs.sqlite3")
    with anyio.fail_after(10):
        assert await store.submit_and_place(_job("first", created=2)) == 1  # an int: stored REAL
        known, job = store.sync.known_next()
        assert known
        assert job is not None
        assert job == store.sync.next_queued()
        assert isinstance(job.created_ts, float)
        got = await store.next_queued()
        assert got == job
        assert got is not job  # a fresh job each time: callers change it
        assert await store.submit_and_place(_job("behind", created=3.0)) == 2
        assert store.sync.known_next() == (False, None)  # not first in line: SQLite answers
        assert (await store.next_queued()).id == "first"  # type: ignore[union-attr]
        assert await store.submit_and_place(_job("urgent", created=4.0, priority=5)) == 1
        assert (await store.next_queued()).id == "urgent"  # type: ignore[union-attr]
        urgent = store.sync.get("urgent")
        assert urgent is not None
        urgent.status = JobStatus.RUNNING
        await store.save(urgent)  # a save reads what waits first, in its own transaction
        known, job = store.sync.known_next()
        assert known
        assert job is not None
        assert job.id == "first"
        assert job == store.sync.next_queued()
        store.sync.recover_interrupted()  # any other write ends what the save vouched for
        assert store.sync.known_next() == (False, None)
        for name in ("first", "behind", "urgent"):
            done = store.sync.get(name)
            assert done is not None
            done.status = JobStatus.SUCCEEDED
            await store.save(done)
        assert store.sync.known_next() == (True, None)  # known: nothing waits
        assert await store.next_queued() is None
        await store.close()
