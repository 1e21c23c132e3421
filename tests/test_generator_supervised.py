"""The generator actor under the supervisor: real worker processes, real tiny Wan jobs."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import av
import pytest

from actors.generator import Generator
from supervisor.core.params import GenerationParams
from supervisor.jobs import Job, JobStatus, new_job_id
from supervisor.runtime import Runtime
from tests.runtime_harness import EventLog, make_home, running_runtime

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def _job(steps: int = 2, size: int = 32, frames: int = 5, **kw: object) -> Job:
    params = GenerationParams(
        prompt="a lighthouse at dusk",
        width=size,
        height=size,
        num_frames=frames,
        steps=steps,
        seed=3,
    )
    return Job(id=new_job_id(), model="tiny-wan", params=params, **kw)  # type: ignore[arg-type]


def _worker_pid(runtime: Runtime) -> int:
    gen = runtime.supervisor.child("generator")
    assert isinstance(gen, Generator)
    assert gen.worker is not None
    return gen.worker.pid


async def _step_reached(log: EventLog, job_id: str, step: int) -> None:
    await log.wait_for(
        lambda: any(
            e.data.job_id == job_id and e.data.step is not None and e.data.step >= step  # type: ignore[attr-defined]
            for e in log.of_type("job.progress")
        ),
        f"step {step} of {job_id}",
    )


async def test_job_runs_and_reports_every_step_and_stage(tmp_path: Path, tiny_model: Path) -> None:
    async with running_runtime(make_home(tmp_path, tiny_model)) as (runtime, log):
        await runtime.supervisor.wait_settled()
        job = await runtime.submit(_job())
        done = await log.wait_job(job.id, "job.succeeded", "job.failed")
        assert done.type.value == "job.succeeded", done.to_json()
        stored = await runtime.store.get(job.id)
        assert stored is not None
        assert stored.status is JobStatus.SUCCEEDED
        assert stored.output_path is not None
        with av.open(stored.output_path) as container:
            assert sum(1 for _ in container.decode(video=0)) == 5
        progress = [e.data for e in log.of_type("job.progress") if e.data.job_id == job.id]  # type: ignore[attr-defined]
        stages = [p.stage.value for p in progress]  # type: ignore[attr-defined]
        assert [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s] == [
            "encode",
            "denoise",
            "decode",
            "save",
        ]
        steps = [p.step for p in progress if p.stage.value == "denoise" and p.step]  # type: ignore[attr-defined]
        assert steps == [1, 2]


async def test_sigkill_mid_job_walks_recovery_and_retries(tmp_path: Path, tiny_model: Path) -> None:
    home = make_home(tmp_path, tiny_model)
    async with running_runtime(home, restart_backoff_base=0.01) as (runtime, log):
        await runtime.supervisor.wait_settled()
        first_pid = _worker_pid(runtime)
        job = await runtime.submit(_job(steps=48, size=128, frames=17))
        await _step_reached(log, job.id, 1)
        os.kill(first_pid, signal.SIGKILL)
        done = await log.wait_job(job.id, "job.succeeded", "job.failed")
        assert done.type.value == "job.succeeded", done.to_json()
        walk = log.states()
        assert walk[walk.index("failed") :][:4] == ["failed", "categorizing", "recovering", "ready"]
        crash = next(
            e.data
            for e in log.of_type("supervisor.transition")
            if e.data.to_state.value == "failed"  # type: ignore[attr-defined]
        )
        assert crash.error_code == "WORKER.CRASHED"  # type: ignore[attr-defined]
        retrying = await log.wait_job(job.id, "job.retrying")
        assert retrying.data.error_code == "WORKER.CRASHED"  # type: ignore[attr-defined]
        assert _worker_pid(runtime) != first_pid
        stored = await runtime.store.get(job.id)
        assert stored is not None
        assert stored.attempts == 2


async def test_silent_worker_is_killed_as_hung_and_replaced(
    tmp_path: Path, tiny_model: Path
) -> None:
    home = make_home(tmp_path, tiny_model)
    async with running_runtime(
        home, stall_timeout=1.5, heartbeat_interval=0.2, restart_backoff_base=0.01
    ) as (runtime, log):
        await runtime.supervisor.wait_settled()
        first_pid = _worker_pid(runtime)
        os.kill(first_pid, signal.SIGSTOP)
        await log.wait_for(lambda: log.states().count("ready") >= 2, "recovery after a hang")
        failed = [
            e.data
            for e in log.of_type("supervisor.transition")
            if e.data.to_state.value == "failed"  # type: ignore[attr-defined]
        ]
        assert failed[0].error_code == "WORKER.HUNG"  # type: ignore[attr-defined]
        assert _worker_pid(runtime) != first_pid
        job = await runtime.submit(_job())
        done = await log.wait_job(job.id, "job.succeeded", "job.failed")
        assert done.type.value == "job.succeeded"


async def test_cancel_mid_denoise_stops_and_leaves_no_output(
    tmp_path: Path, tiny_model: Path
) -> None:
    from supervisor.supervision.messages import CancelRequest

    async with running_runtime(make_home(tmp_path, tiny_model)) as (runtime, log):
        await runtime.supervisor.wait_settled()
        job = await runtime.submit(_job(steps=1000, size=256, frames=33))
        await _step_reached(log, job.id, 2)
        await runtime.supervisor.ask(CancelRequest(job.id), object)
        await log.wait_job(job.id, "job.cancelled")
        steps = [
            e.data.step
            for e in log.of_type("job.progress")  # type: ignore[attr-defined]
            if e.data.job_id == job.id and e.data.step  # type: ignore[attr-defined]
        ]
        assert max(steps) < 1000
        stored = await runtime.store.get(job.id)
        assert stored is not None
        assert stored.status is JobStatus.CANCELLED
        assert list(runtime.output_dir.iterdir()) == []
        assert runtime.supervisor.state.value == "ready"
