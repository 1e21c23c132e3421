"""How /metrics counts: the event sequences of real runs (a worker killed, an out-of-memory at
decode, a pre-flight refusal, a job's stages) fed to the counters, read from their registry.
The same counters run against a real server in tests/test_status_page.py."""

from __future__ import annotations

from itertools import count

from prometheus_client import CollectorRegistry

from supervisor.api.metrics import EventCounters
from supervisor.bus import Event
from supervisor.bus.events import (
    ActorCrashed,
    ActorRestarted,
    EventData,
    JobFailed,
    JobProgress,
    JobRetrying,
    JobStarted,
    JobSucceeded,
    RecoveryAttempt,
    SupervisorTransition,
    VramSample,
    VramSource,
)
from supervisor.core.stages import Stage
from supervisor.core.states import State

_seq = count(1)


def _feed(counters: EventCounters, ts: float, data: EventData) -> None:
    counters.observe(Event(seq=next(_seq), ts=ts, data=data))


def _walk(counters: EventCounters, code: str, *states: State, start: State = State.READY) -> None:
    before = start
    for state in states:
        data = SupervisorTransition(from_state=before, to_state=state, trigger="t", error_code=code)
        _feed(counters, 1.0, data)
        before = state


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_a_killed_worker_is_one_error_one_restart_and_one_recovery() -> None:
    registry = CollectorRegistry()
    counters = EventCounters(registry)
    _feed(counters, 1.0, ActorCrashed(actor="generator", message="killed by signal 9"))
    _walk(counters, "WORKER.CRASHED", State.FAILED, State.CATEGORIZING, State.RECOVERING)
    _feed(counters, 1.0, ActorRestarted(actor="generator", restarts_in_window=1, delay_s=0.2))
    _walk(counters, "", State.READY, start=State.RECOVERING)
    assert _value(registry, "genvisor_errors_total", code="WORKER.CRASHED") == 1
    assert _value(registry, "genvisor_worker_restarts_total") == 1
    assert _value(registry, "genvisor_recoveries_total", rung="restart", result="ok") == 1


def test_an_oom_recovery_is_counted_at_its_rung_and_a_refusal_once() -> None:
    registry = CollectorRegistry()
    counters = EventCounters(registry)
    _walk(counters, "VRAM.EXHAUSTED", State.FAILED, State.CATEGORIZING, State.RECOVERING)
    _feed(counters, 2.0, RecoveryAttempt(job_id="j1", step="vae_tiling", error_code="V"))
    retry = JobRetrying(job_id="j1", attempt=2, reason="tiles", error_code="VRAM.EXHAUSTED")
    _feed(counters, 2.0, retry)
    # A job that fails inside the walk is the walk's error, not a second one.
    _feed(counters, 3.0, JobFailed(job_id="j1", error={"code": "VRAM.EXHAUSTED"}))
    _walk(counters, "", State.HALTED, start=State.RECOVERING)
    assert _value(registry, "genvisor_errors_total", code="VRAM.EXHAUSTED") == 1
    assert _value(registry, "genvisor_recoveries_total", rung="vae_tiling", result="failed") == 1
    assert _value(registry, "genvisor_jobs_total", status="failed") == 1
    # A pre-flight refusal while ready: no walk, one error.
    counters2 = EventCounters(registry2 := CollectorRegistry())
    _feed(counters2, 4.0, JobFailed(job_id="j2", error={"code": "VRAM.EXHAUSTED"}))
    assert _value(registry2, "genvisor_errors_total", code="VRAM.EXHAUSTED") == 1


def test_each_stage_and_the_whole_job_are_timed_by_model() -> None:
    registry = CollectorRegistry()
    counters = EventCounters(registry)
    _feed(counters, 10.0, JobStarted(job_id="j", attempt=1, model="tiny-wan"))
    for ts, stage, step in ((11.0, Stage.ENCODE, None), (12.0, Stage.DENOISE, 1),
                            (13.0, Stage.DENOISE, 2), (15.0, Stage.DECODE, None),
                            (16.0, Stage.SAVE, None)):  # fmt: skip
        progress = JobProgress(job_id="j", stage=stage, step=step, total_steps=2, elapsed_s=1.0)
        _feed(counters, ts, progress)
    _feed(counters, 16.5, JobSucceeded(job_id="j", output="j.mp4", duration_s=6.5))
    expected = {"encode": 1.0, "denoise": 3.0, "decode": 1.0, "save": 0.5, "total": 6.5}
    for stage, seconds in expected.items():
        labels = {"model": "tiny-wan", "stage": stage}
        assert _value(registry, "genvisor_job_duration_seconds_count", **labels) == 1, stage
        assert _value(registry, "genvisor_job_duration_seconds_sum", **labels) == seconds, stage
    assert _value(registry, "genvisor_jobs_total", status="succeeded") == 1
    assert _value(registry, "genvisor_jobs_total", status="cancelled") == 0


def test_memory_samples_keep_the_last_minutes() -> None:
    counters = EventCounters(CollectorRegistry())
    for ts in (0.0, 100.0, 400.0):
        sample = VramSample(source=VramSource.HOST, device="cpu", total=8, used=3, free=5)
        _feed(counters, ts, sample)
    assert [s["ts"] for s in counters.memory.recent()] == [100.0, 400.0]
    assert counters.memory.latest()["cpu"].used == 3
