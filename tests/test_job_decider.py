"""The job decider on its own: every retry, fail and cancel decision as a value, no process, no
event loop, no torch, no store. Each test builds a job and the supervisor's facts, asks the
decider, and reads the decision (the job to write, the transitions and events in order, the next
attempt with its typed changes, the degraded reasons)."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.generator import ModelChoice
from actors.worker.protocol import Done, Failed
from supervisor.bus import events as ev
from supervisor.core.params import GenerationParams, PipelineOptions
from supervisor.core.states import State, Trigger
from supervisor.errors import ErrorCode, ErrorReport, Stage
from supervisor.jobs import REPAIR_MODEL, ChangeOrigin, Job, JobStatus
from supervisor.recovery.diagnosis import Diagnosis
from supervisor.recovery.ladder import RungId, load_ladder
from supervisor.recovery.planner import MemoryPlanner
from supervisor.supervision.decisions import CancelKind, Facts, JobDecision, ModelStep
from supervisor.supervision.job_decider import JobDecider

NOW = 1_000.0
LADDER = load_ladder()


def _diagnosis(code: str, category: str = "vram_memory") -> Diagnosis:
    return Diagnosis(code, category, True, False, {"message": f"{code} happened"})


OOM = _diagnosis("VRAM.EXHAUSTED")
CORRUPTED = _diagnosis("MODEL.CORRUPTED", "model_loading")
BAD_INPUT = Diagnosis("INPUT.INVALID", "input_validation", False, False, {"message": "bad"})
CRASH = _diagnosis("WORKER.CRASHED", "system_resource")


def _decider(
    device: str = "cpu", *, max_attempts: int = 6, crash_retries: int = 1, fallback: bool = False
) -> JobDecider:
    return JobDecider(
        output_dir=Path("/data/outputs"),
        crash_retries=crash_retries,
        memory=MemoryPlanner(LADDER, device=device, max_attempts=max_attempts),
        allow_fallback=fallback,
    )


def _job(*, device: str = "cpu", attempts: int = 1, allow: bool = True) -> Job:
    params = GenerationParams(prompt="a boat", width=1280, height=720, num_frames=81, steps=30)
    return Job(
        id="j1",
        model="tiny-wan",
        params=params,
        options=PipelineOptions(device=device),
        allow_output_changes=allow,
        status=JobStatus.RUNNING,
        attempts=attempts,
        created_ts=NOW - 10,
        started_ts=NOW - 5,
    )


def _failed(stage: Stage, latents: str | None = None) -> Failed:
    report = ErrorReport(exc_type="torch.OutOfMemoryError", message="out of memory", stage=stage)
    return Failed(job_id="j1", report=report, latents_path=latents)


def _facts(
    state: State = State.READY,
    *,
    degraded: dict[str, str] | None = None,
    recovering: str | None = None,
) -> Facts:
    return Facts(state=state, now=NOW, degraded=degraded or {}, recovering_job_id=recovering)


def _types(decision: JobDecision) -> list[str]:
    return [e.event_type.value for e in decision.events]


def _done(job: Job) -> Done:
    return Done(
        job_id=job.id,
        output_path="/data/outputs/j1.mp4",
        sidecar_path="/data/outputs/j1.json",
        timings={Stage.DENOISE: 1.0},
        peak_memory_bytes=10,
        peak_growth_bytes=5,
        params_used=job.params,
        options_used=job.options,
    )


# -- out of memory: the next rung, with its change ------------------------------------------------


def test_oom_plans_the_next_rung_with_its_change_and_a_fresh_worker_on_a_cpu() -> None:
    job = _job()
    decision = _decider().failed(job, _failed(Stage.DENOISE), OOM, _facts())
    assert decision.status is JobStatus.RETRYING
    assert decision.triggers == (Trigger.FAIL, Trigger.CATEGORIZE, Trigger.PLAN)
    assert _types(decision) == ["recovery.attempt", "job.retrying"]
    attempt = decision.next_attempt
    assert attempt is not None
    assert attempt.number == 2
    assert not attempt.after_crash
    (change,) = attempt.changes
    assert change.rung == RungId.LAYERWISE_FP8.value
    assert change.origin is ChangeOrigin.RECOVERY
    assert change.attempt == 2
    assert change.fresh_worker  # a process that hit the cap keeps memory mapped
    assert not change.decode_only
    assert decision.job.rungs_tried == ["layerwise_fp8"]
    assert decision.job.options.layerwise_fp8 != job.options.layerwise_fp8
    assert decision.recovering_job_id == "j1"
    # Pure: the job it was given is unchanged.
    assert job.status is JobStatus.RUNNING
    assert job.changes == []
    assert job.rungs_tried == []


def test_a_decode_oom_with_kept_latents_retries_the_decode_only() -> None:
    decision = _decider().failed(
        _job(), _failed(Stage.DECODE, latents="/data/j1.latents.safetensors"), OOM, _facts()
    )
    attempt = decision.next_attempt
    assert attempt is not None
    assert attempt.decode_only_from == "/data/j1.latents.safetensors"
    assert [c.rung for c in attempt.changes] == ["vae_tiling"]
    assert attempt.changes[0].decode_only
    assert "decode the kept latents again" in decision.reason
    # The attempt it plans is what dispatch starts: the generator decodes the kept latents.
    started = _decider().start_attempt(decision.job, NOW + 1)
    assert started.run.decode_only_from == "/data/j1.latents.safetensors"
    assert started.run.fresh_worker
    assert started.run.attempt == 2
    assert started.job.status is JobStatus.RUNNING


def test_no_rung_left_fails_the_job_alone_and_the_service_stays_ready() -> None:
    # On a CPU no rung lowers what loading the weights needs.
    decision = _decider().failed(_job(), _failed(Stage.DENOISE), OOM, _facts())
    job = decision.job
    for _ in range(10):
        if decision.status is not JobStatus.RETRYING:
            break
        job.status, job.attempts = JobStatus.RUNNING, job.attempts + 1
        recovering = _facts(State.RECOVERING, recovering=job.id)
        decision = _decider().failed(job, _failed(Stage.DENOISE), OOM, recovering)
        job = decision.job
    assert decision.status is JobStatus.FAILED
    assert decision.next_attempt is None
    assert decision.triggers == (Trigger.FAIL, Trigger.CATEGORIZE, Trigger.DISMISS)
    assert _types(decision) == ["job.failed", "recovery.result"]
    assert "can not fit" in decision.reason
    assert decision.degrade == {}  # a job that does not fit is not a missing capability
    assert decision.recovering_job_id is None
    assert decision.job.error == OOM.user_error


def test_bounded_by_max_attempts() -> None:
    job = _job()
    job.rungs_tried = ["layerwise_fp8"]
    decision = _decider(max_attempts=0).failed(job, _failed(Stage.DENOISE), OOM, _facts())
    assert decision.status is JobStatus.FAILED
    assert "0 recovery attempts used" in decision.reason


def test_an_oom_at_load_that_nothing_helps_makes_the_model_unusable_not_the_service() -> None:
    decision = _decider().failed(_job(), _failed(Stage.LOAD), OOM, _facts())
    assert decision.status is JobStatus.FAILED
    assert decision.triggers[-1] is Trigger.DISMISS_DEGRADED
    assert list(decision.degrade) == ["model:tiny-wan"]
    assert Trigger.GIVE_UP not in decision.triggers  # halted is for infrastructure, never a job


def test_a_failure_that_a_retry_cannot_help_is_dismissed() -> None:
    decision = _decider().failed(_job(), _failed(Stage.DENOISE), BAD_INPUT, _facts())
    assert decision.status is JobStatus.FAILED
    assert decision.triggers == (Trigger.FAIL, Trigger.CATEGORIZE, Trigger.DISMISS)
    assert decision.reason == "not recoverable by a retry: INPUT.INVALID"
    degraded = _decider().failed(
        _job(), _failed(Stage.DENOISE), BAD_INPUT, _facts(State.DEGRADED, degraded={"gpu": "x"})
    )
    assert degraded.triggers[-1] is Trigger.DISMISS_DEGRADED


def test_a_failure_while_not_serving_fails_the_job_without_a_transition() -> None:
    decision = _decider().failed(_job(), _failed(Stage.DENOISE), OOM, _facts(State.HALTED))
    assert decision.status is JobStatus.FAILED
    assert decision.triggers == ()


# -- a worker crash: retried within bounds ---------------------------------------------------------


def test_a_crash_retries_up_to_the_limit_then_fails() -> None:
    report = ErrorReport(exc_type="WorkerCrashed", message="exit code -9", stage=Stage.WORKER)
    decider = _decider(crash_retries=2)
    job = _job()
    outcomes = []
    for _ in range(3):
        decision = decider.worker_crashed(job, report, CRASH, _facts(State.READY))
        outcomes.append(decision.status)
        job = decision.job
        assert decision.triggers == ()  # the child's restart fires the transitions
    assert outcomes == [JobStatus.RETRYING, JobStatus.RETRYING, JobStatus.FAILED]
    assert job.crash_retries == 2
    first = decider.worker_crashed(_job(), report, CRASH, _facts())
    assert first.next_attempt is not None
    assert first.next_attempt.after_crash
    assert first.next_attempt.changes == ()
    assert "exit code -9" in first.next_attempt.reason


def test_a_crash_under_the_job_being_recovered_ends_that_recovery_watch() -> None:
    report = ErrorReport(exc_type="WorkerCrashed", message="killed", stage=Stage.WORKER)
    decision = _decider().worker_crashed(
        _job(), report, CRASH, _facts(State.RECOVERING, recovering="j1")
    )
    assert decision.recovering_job_id is None


# -- a model that cannot be made available ---------------------------------------------------------


def test_a_damaged_load_is_repaired_once_then_the_job_fails() -> None:
    load = Failed(
        job_id="j1", report=ErrorReport(exc_type="SafetensorError", message="bad", stage=Stage.LOAD)
    )
    first = _decider().failed(_job(), load, CORRUPTED, _facts())
    assert first.status is JobStatus.RETRYING
    assert first.next_attempt is not None
    assert [c.rung for c in first.next_attempt.changes] == [REPAIR_MODEL]
    assert _decider().start_attempt(first.job, NOW).run.repair_model
    again = first.job
    again.status, again.attempts = JobStatus.RUNNING, 2
    second = _decider().failed(again, load, CORRUPTED, _facts(State.RECOVERING, recovering="j1"))
    assert second.status is JobStatus.FAILED
    # Explained, not looped: the files are still damaged after their repair.
    assert second.reason == "not recoverable by a retry: MODEL.CORRUPTED"
    assert second.triggers[-1] is Trigger.DISMISS


@pytest.mark.parametrize(
    ("code", "repaired", "fallback", "step"),
    [
        (ErrorCode.MODEL_CORRUPTED, False, False, ModelStep.REPAIR),
        (ErrorCode.MODEL_INCOMPLETE, False, True, ModelStep.REPAIR),
        (ErrorCode.MODEL_CORRUPTED, True, False, ModelStep.FAIL),  # repaired once already
        (ErrorCode.MODEL_CORRUPTED, True, True, ModelStep.FALLBACK),
        (ErrorCode.MODEL_NOT_FOUND, False, True, ModelStep.FALLBACK),
        (ErrorCode.MODEL_NOT_FOUND, False, False, ModelStep.FAIL),
    ],
)
def test_before_a_load_repair_once_then_fallback_or_fail(
    code: ErrorCode, repaired: bool, fallback: bool, step: ModelStep
) -> None:
    assert _decider(fallback=fallback).model_unavailable(code, repaired=repaired) is step


def test_a_fallback_model_is_a_change_of_the_job_and_a_degraded_reason() -> None:
    job = _job()
    used = ModelChoice("tiny-wan-small", Path("/m"), fallback="tiny-wan unavailable; using small")
    decision = _decider().succeeded(job, _done(job), used, _facts())
    assert decision.status is JobStatus.SUCCEEDED
    assert [c.rung for c in decision.job.changes] == ["fallback_model"]
    assert decision.degrade == {"model": "tiny-wan unavailable; using small"}
    assert decision.triggers == (Trigger.DEGRADE,)
    assert decision.job.result is not None
    assert decision.job.result["model"] == "tiny-wan-small"


# -- success after a recovery ---------------------------------------------------------------------


def test_a_success_after_recovery_restores_ready_and_teaches_the_rung() -> None:
    job = _decider().failed(_job(), _failed(Stage.DENOISE), OOM, _facts()).job
    job.status, job.attempts = JobStatus.RUNNING, 2
    degraded = {"model:tiny-wan": "tiny-wan cannot be loaded here"}
    decision = _decider().succeeded(
        job, _done(job), None, _facts(State.RECOVERING, degraded=degraded, recovering="j1")
    )
    # Recovered while the model was marked unusable (degraded), then its load worked: ready.
    assert decision.triggers == (Trigger.RECOVERED_DEGRADED, Trigger.RESTORE)
    assert _types(decision) == ["job.succeeded", "recovery.result"]
    assert decision.restore == ("model:tiny-wan",)
    assert decision.recovering_job_id is None
    assert decision.learn is not None
    assert decision.learn.rung is RungId.LAYERWISE_FP8
    assert decision.job.finished_ts == NOW
    assert decision.job.decode_only_from is None


# -- cancel, at each point ------------------------------------------------------------------------


def test_cancel_at_each_point_of_a_jobs_life() -> None:
    decider = _decider()
    assert decider.cancel_requested(None, None, _facts()).kind is CancelKind.UNKNOWN

    waiting = _job(attempts=0)
    waiting.status = JobStatus.QUEUED
    now = decider.cancel_requested(waiting, None, _facts())
    assert now.kind is CancelKind.NOW
    assert now.decision is not None
    assert now.decision.status is JobStatus.CANCELLED
    assert _types(now.decision) == ["job.cancelled"]
    assert now.decision.triggers == ()

    running = _job()
    on_worker = decider.cancel_requested(running, running, _facts())
    assert on_worker.kind is CancelKind.RUNNING
    assert on_worker.decision is None  # the generator cancels it; its outcome decides

    finished = _job()
    finished.status = JobStatus.SUCCEEDED
    assert decider.cancel_requested(finished, None, _facts()).kind is CancelKind.REFUSED


def test_cancel_of_the_job_being_recovered_ends_the_recovery() -> None:
    decider = _decider()
    retrying = decider.failed(_job(), _failed(Stage.DENOISE), OOM, _facts()).job
    during = _facts(State.RECOVERING, recovering="j1")
    # Waiting for its re-run (retrying), or stopped on the worker / while its model is repaired.
    waiting = decider.cancel_requested(retrying, None, during).decision
    retrying.status = JobStatus.RUNNING
    stopped = decider.cancelled(retrying, during)
    for decision in (waiting, stopped):
        assert decision is not None
        assert decision.status is JobStatus.CANCELLED
        assert decision.triggers == (Trigger.RECOVERED,)
        assert _types(decision) == ["job.cancelled", "recovery.result"]
        result = decision.events[-1]
        assert isinstance(result, ev.RecoveryResult)
        assert not result.ok
        assert decision.recovering_job_id is None


def test_a_cancelled_job_not_under_recovery_leaves_the_state_alone() -> None:
    decision = _decider().cancelled(_job(), _facts(State.RECOVERING, recovering="other"))
    assert decision.triggers == ()
    assert decision.recovering_job_id == "other"


def test_preflight_refusal_fails_alone_without_a_transition() -> None:
    decision = _decider().preflight_refused(_job(attempts=0), OOM, _facts())
    assert decision.status is JobStatus.FAILED
    assert decision.triggers == ()
    assert _types(decision) == ["job.failed"]
