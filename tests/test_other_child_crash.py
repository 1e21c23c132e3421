"""A crash of a child that is not the job's generator (here the VRAM monitor) leaves the running
job alone: the worker goes on, the job succeeds once, with one attempt. Before, with one device,
any child's crash took the running job and re-ran it as if its worker had died."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.core.exceptions import ActorCrashedError
from supervisor.core.params import GenerationParams
from supervisor.jobs import Job, new_job_id
from tests.runtime_harness import make_home, running_runtime

pytestmark = pytest.mark.slow


@pytest.mark.anyio
async def test_a_monitor_crash_mid_job_does_not_rerun_the_job(
    tmp_path: Path, tiny_model: Path
) -> None:
    home = make_home(tmp_path, tiny_model)
    async with running_runtime(home) as (runtime, log):
        await runtime.supervisor.wait_settled()
        params = GenerationParams(prompt="x", width=128, height=128, num_frames=9, steps=12)
        job = Job(id=new_job_id(), model="tiny-wan", params=params)
        await runtime.submit(job)
        await log.wait_for(
            lambda: any(
                getattr(e.data, "job_id", None) == job.id and getattr(e.data, "step", None)
                for e in log.of_type("job.progress")
            ),
            "the job's first step",
        )
        monitor = runtime.supervisor.child("vram_monitor")
        assert monitor is not None
        with pytest.raises(ActorCrashedError):
            await monitor.ask(object(), object, timeout=5)  # raises in its handler: a crash
        done = await log.wait_job(job.id, "job.succeeded", "job.failed", limit=120)
        assert done.type.value == "job.succeeded", done.to_json()
        assert log.of_type("job.retrying") == []
        stored = await runtime.store.get(job.id)
        assert stored is not None
        assert stored.attempts == 1
        crashed = [e.data.actor for e in log.of_type("actor.crashed")]  # type: ignore[attr-defined]
        assert crashed == ["vram_monitor"]
