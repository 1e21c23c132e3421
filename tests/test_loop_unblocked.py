"""Nothing blocks the loop: with NVML wedged and the event journal's lock held for seconds, an
in-process runtime (real worker process, real supervisor, real SQLite journal) keeps receiving
its worker's heartbeats, `/healthz` and `/v1/state` answer, and the service says what is wrong
(degraded: device telemetry) and recovers when the driver does. With the job store's lock held
for seconds (a write that takes that long), heartbeats and `/healthz` flow too, and a submit is
answered 202 only once its job is committed.

The VRAM monitor reads a FAKE GPU (tests/fake_nvml.py: this machine has none) while the worker
runs on this machine's CPU."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import anyio
import anyio.lowlevel
import anyio.to_thread
import httpx
import pytest
from fastapi import FastAPI

from actors.generator import Generator
from actors.vram.memory_sources import NvmlSource
from supervisor.api.http_api import build_router
from supervisor.jobs import JobStatus
from supervisor.runtime.start_up import TELEMETRY_KEY
from tests.fake_nvml import FakeNvml
from tests.runtime_harness import make_home, running_runtime

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

BLOCK_S = 3.0  # how long the driver and the journal stay blocked (the deadline is 0.5 s)


class _HeldLock:
    """Holds a threading lock from another thread (a flush that takes seconds) until released."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self.held = threading.Event()
        self.let_go = threading.Event()  # set once the lock is released again
        self._release = threading.Event()
        self._thread = threading.Thread(target=self._hold, name="slow-flush", daemon=True)

    def _hold(self) -> None:
        with self._lock:
            self.held.set()
            self._release.wait(30.0)
        self.let_go.set()

    def __enter__(self) -> _HeldLock:
        self._thread.start()
        return self

    def release(self) -> None:
        self._release.set()

    def __exit__(self, *exc: object) -> None:
        self.release()
        self._thread.join(30.0)


async def test_heartbeats_and_healthz_flow_while_nvml_and_the_journal_are_blocked(
    tmp_path: Path,
) -> None:
    fake = FakeNvml()
    source = NvmlSource.open(0, nvml=fake)
    async with running_runtime(
        tmp_path / "home",
        runtime_kwargs={"nvml": fake, "memory_source": source},
        device="cpu",
        heartbeat_interval=0.1,
        vram_sample_interval=0.1,
        vram_sample_deadline=0.5,
    ) as (runtime, log):
        await runtime.supervisor.wait_settled()
        generator = runtime.supervisor.child("generator")
        assert isinstance(generator, Generator)
        app = FastAPI()
        app.include_router(build_router(runtime))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://genvisor") as client:
            await log.wait_for(lambda: "ready" in log.states(), "ready")
            fake.wedge()
            with _HeldLock(runtime.journal._lock) as journal_lock:
                with anyio.fail_after(10):
                    await anyio.to_thread.run_sync(fake.entered.wait)
                    await anyio.to_thread.run_sync(journal_lock.held.wait)
                beats_before = generator.heartbeats
                health: list[float] = []
                state: list[float] = []
                end = time.monotonic() + BLOCK_S
                # The block lasts BLOCK_S; the requests are the load, not a way to wait.
                while time.monotonic() < end:
                    started = time.monotonic()
                    answer = await client.get("/healthz")
                    health.append(time.monotonic() - started)
                    assert answer.status_code == 200
                    if len(health) % 20 == 0:
                        started = time.monotonic()
                        dump = await client.get("/v1/state")
                        state.append(time.monotonic() - started)
                        assert dump.status_code == 200
                        # Answered while the journal's lock is still held, not after it.
                        assert not journal_lock.let_go.is_set()
                still_blocked = fake.entered.is_set() and not fake._released.is_set()
                beats_during = generator.heartbeats - beats_before
                degraded_during = dict(runtime.supervisor.degraded_reasons)
                age_during = generator.describe()["heartbeat_age_s"]
            fake.release()
            await log.wait_for(
                lambda: (
                    TELEMETRY_KEY not in runtime.supervisor.degraded_reasons
                    and runtime.supervisor.state.value == "ready"
                ),
                "telemetry back, ready again",
                limit=30,
            )
            states = log.states()

    assert still_blocked  # every figure below was taken with the driver still stuck
    assert fake.blocked_calls == 1  # no second thread ever entered the stuck driver
    assert beats_during > 0  # the loop kept reading the worker's heartbeats
    assert age_during is not None
    assert health  # /healthz answered throughout the block
    assert state  # /v1/state did not wait on the journal's lock
    assert TELEMETRY_KEY in degraded_during
    assert "did not answer within 0.5 s" in degraded_during[TELEMETRY_KEY]
    assert states[-2:] == ["degraded", "ready"]
    # Figures, not thresholds (run with -s to see them).
    print(  # noqa: T201
        f"blocked {BLOCK_S:g} s: {len(health)} /healthz, worst {max(health) * 1000:.1f} ms; "
        f"{len(state)} /v1/state, worst {max(state) * 1000:.1f} ms; "
        f"{beats_during} heartbeats received; heartbeat age at the end {age_during} s"
    )


SMALL = {"prompt": "a kite over a beach", "width": 32, "height": 32, "frames": 5, "steps": 2}


async def test_heartbeats_and_healthz_flow_while_the_job_store_is_blocked(
    tmp_path: Path, tiny_model: Path
) -> None:
    async with running_runtime(
        make_home(tmp_path, tiny_model), device="cpu", heartbeat_interval=0.1
    ) as (runtime, log):
        await runtime.supervisor.wait_settled()
        generator = runtime.supervisor.child("generator")
        assert isinstance(generator, Generator)
        app = FastAPI()
        app.include_router(build_router(runtime))
        transport = httpx.ASGITransport(app=app)
        answers: list[httpx.Response] = []
        async with httpx.AsyncClient(transport=transport, base_url="http://genvisor") as client:

            async def submit() -> None:
                answers.append(await client.post("/v1/jobs", json=SMALL))

            with _HeldLock(runtime.store.sync._lock) as store_lock:
                with anyio.fail_after(10):
                    await anyio.to_thread.run_sync(store_lock.held.wait)
                beats_before = generator.heartbeats
                health: list[float] = []
                async with anyio.create_task_group() as tg:
                    tg.start_soon(submit)
                    end = time.monotonic() + BLOCK_S
                    # The block lasts BLOCK_S; the requests are the load, not a way to wait.
                    while time.monotonic() < end:
                        started = time.monotonic()
                        answer = await client.get("/healthz")
                        health.append(time.monotonic() - started)
                        assert answer.status_code == 200
                        # In-process requests may never yield (nothing to wait for): a real
                        # client's network round trip would; without it this loop starves the
                        # others and measures itself, not the store.
                        await anyio.lowlevel.checkpoint()
                    unanswered_during = not answers  # durable first: no 202 before the commit
                    beats_during = generator.heartbeats - beats_before
                    store_lock.release()
            assert len(answers) == 1
            assert answers[0].status_code == 202
            job_id = answers[0].json()["id"]
            committed = await runtime.store.get(job_id)
            assert committed is not None
            await log.wait_job(job_id, "job.succeeded", limit=60)
            done = await runtime.store.get(job_id)

    assert unanswered_during
    assert beats_during > 0  # the loop kept reading the worker's heartbeats
    assert len(health) > 10  # /healthz answered throughout the block
    assert done is not None
    assert done.status is JobStatus.SUCCEEDED
    print(  # noqa: T201
        f"job store blocked {BLOCK_S:g} s: {len(health)} /healthz, worst "
        f"{max(health) * 1000:.1f} ms; {beats_during} heartbeats received"
    )
