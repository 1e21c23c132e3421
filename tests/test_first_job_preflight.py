"""A server's first job is pre-flighted like the next ones: the weights of every model already
in the store are read (safetensors headers) when the runtime starts, not when a job first
resolves the model (which happens after that job's own pre-flight)."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.core.params import GenerationParams
from supervisor.jobs import Job, new_job_id
from tests.runtime_harness import make_home, running_runtime

pytestmark = pytest.mark.slow


@pytest.mark.anyio
async def test_the_weights_of_stored_models_are_known_before_any_job(
    tmp_path: Path, tiny_model: Path
) -> None:
    home = make_home(tmp_path, tiny_model)
    async with running_runtime(home, device_memory_limit="2GiB") as (runtime, log):
        await runtime.supervisor.wait_settled()
        params = GenerationParams(prompt="x", width=1280, height=1280, num_frames=81, steps=2)
        job = Job(id=new_job_id(), model="tiny-wan", params=params)
        accounting = runtime.device_parts[0].accounting
        # The headers are read in a thread at start; telemetry events keep the log moving.
        await log.wait_for(
            lambda: accounting.estimate(job, job.options, params) is not None, "the weights", 60
        )
        assert log.of_type("job.started") == []  # known before any job ran
        await log.wait_for(lambda: accounting.budget(job) is not None, "the worker's size", 60)
        plan = runtime.device_parts[0].memory.preview(job)
        assert plan is not None  # pre-flight has a verdict for this first job
        asked = accounting.estimate(job, job.options, params)
        assert asked is not None
        assert asked.needed > 2 * 1024**3  # as asked it could never fit under the cap
        assert plan.rung is not None  # so it starts lower on the ladder, or is refused
