"""Dispatch checks the supervisor's state before pre-flight: while recovering (or halted, or
starting) the jobs waiting behind are not pre-flighted again on every supervisor message, and
the job whose re-run decides the recovery starts wherever it stands in the queue.

Real parts: a JobStore on SQLite, a MemoryRecovery (ladder, learned strategies) whose budget
callable counts the pre-flights, and a running actor standing for the generator."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from actors.actor import Actor
from actors.generator import RunJob
from supervisor.core.params import GenerationParams
from supervisor.jobs import AsyncJobStore, Job, JobStatus, JobStore
from supervisor.recovery.diagnosis import Diagnosis
from supervisor.recovery.ladder import load_ladder
from supervisor.recovery.learned_strategies import LearnedStrategies
from supervisor.recovery.memory import MemoryRecovery
from supervisor.supervision.job_decider import JobDecider
from supervisor.supervision.job_flow import JobFlow
from supervisor.supervision.state_machine import State

pytestmark = pytest.mark.anyio

PARAMS = GenerationParams(prompt="a boat", width=32, height=32, num_frames=5, steps=2)


class RecordingGenerator(Actor):
    """Stands for the generator: records the jobs it is told to run (no worker process)."""

    def __init__(self) -> None:
        super().__init__("generator")
        self.runs: list[RunJob] = []

    async def handle(self, message: object) -> object:
        assert isinstance(message, RunJob)
        self.runs.append(message)
        return None


def _diagnose(report: object, **kw: object) -> Diagnosis:
    raise AssertionError("no job fails in this test")


async def test_preflight_runs_only_when_a_job_may_start(tmp_path: Path) -> None:
    preflights: list[str] = []

    def budget(job: Job) -> int | None:
        preflights.append(job.id)
        return None  # unknown: pre-flight lets the job through unchanged

    strategies = LearnedStrategies(tmp_path / "vram.sqlite3")
    memory = MemoryRecovery(
        load_ladder(),
        strategies,
        device="cpu",
        device_name="test host",
        max_attempts=6,
        memory_key=lambda: (None, 8 * 1024**3),
        budget=budget,
        estimate=lambda job, options, params: None,
        reserve=0,
    )
    store = JobStore(tmp_path / "jobs.sqlite3")
    generator = RecordingGenerator()
    flow = JobFlow(
        AsyncJobStore(store),
        publish=lambda data: None,
        generator=lambda: generator,
        decider=JobDecider(output_dir=tmp_path, crash_retries=1, memory=memory.planner),
        diagnose=_diagnose,  # type: ignore[arg-type]
        memory=memory,
    )
    fresh = store.submit(Job(id="fresh", model="tiny-wan", params=PARAMS, created_ts=1.0))
    retried = Job(id="retried", model="tiny-wan", params=PARAMS, created_ts=2.0, attempts=1)
    retried.status = JobStatus.RETRYING
    store.submit(retried)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(generator.run)
            for state in (State.STARTING, State.HALTED, State.FAILED, State.RECOVERING) * 5:
                await flow.dispatch(state)  # every supervisor message while not serving
            assert preflights == []
            assert flow.running is None  # recovering, but no job is the one being recovered

            flow.recovering_job_id = "retried"
            await flow.dispatch(State.RECOVERING)
            # Behind the fresh job in the queue, and started without a pre-flight (it ran).
            assert flow.running is not None
            assert flow.running.id == "retried"
            assert preflights == []
            for _ in range(5):
                await flow.dispatch(State.RECOVERING)  # it runs: nothing else starts
            assert preflights == []

            assert flow.take_running("retried") is not None
            flow.recovering_job_id = None
            await flow.dispatch(State.READY)
            assert flow.running is not None
            assert flow.running.id == fresh.id
            assert preflights == ["fresh"]  # once, when it could start
            generator.stop()
    assert [r.job_id for r in generator.runs] == ["retried", "fresh"]
    store.close()
    strategies.close()
