"""The one place that decides what happens to a job: every retry, fail and cancel.

`JobDecider` owns every retry decision: the memory rungs after an out-of-memory and the model
repair after a damaged load (through the pure recovery planners), the re-run after a worker
crash (within `job_crash_retries`), the repair or fallback of a model that cannot be made
available before it loads, and the cancel at each point of a job's life. Each method takes one
event with the facts it needs and returns a decision value (supervisor/supervision/decisions.py).

Invariant: pure. No I/O, no event loop, no clock (`Facts.now`), and no input is mutated: the
job in a decision is a copy. The supervisor, `JobFlow` and `ModelResolver` carry decisions out.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from actors.generator import ModelChoice, RunJob
from actors.worker.protocol import Done, Failed
from supervisor.bus import events as ev
from supervisor.core.states import State, Trigger
from supervisor.errors import ErrorCode, ErrorReport, Stage
from supervisor.jobs import (
    FALLBACK_MODEL,
    REPAIR_MODEL,
    Change,
    ChangeOrigin,
    Job,
    JobStatus,
)
from supervisor.jobs.input_store import InputStore
from supervisor.recovery.diagnosis import Diagnosis
from supervisor.recovery.ladder import RungId
from supervisor.recovery.model_repair import (
    fresh_worker_pending,
    plan_model_repair,
    repair_pending,
)
from supervisor.recovery.planner import MemoryPlanner, RecoveryStep
from supervisor.supervision.decisions import (
    Attempt,
    CancelDecision,
    CancelKind,
    Facts,
    JobDecision,
    Learning,
    ModelStep,
    NextAttempt,
    Walk,
)

__all__ = ["JobDecider", "applied_actions"]

# Damage the model loader can repair before a load (a second damage is explained, not looped).
_REPAIRABLE = frozenset({ErrorCode.MODEL_CORRUPTED, ErrorCode.MODEL_INCOMPLETE})
_SERVING_OR_RECOVERING = frozenset({State.READY, State.DEGRADED, State.RECOVERING})


def applied_actions(job: Job) -> tuple[str, ...]:
    """The recovery actions already applied to a job (its explanation skips suggesting them)."""
    return tuple(c.action for c in job.changes if c.action)


def _copy(job: Job) -> Job:
    return dataclasses.replace(job, changes=list(job.changes), rungs_tried=list(job.rungs_tried))


class JobDecider:
    def __init__(
        self,
        *,
        output_dir: Path,
        crash_retries: int,
        memory: MemoryPlanner | None = None,
        allow_fallback: bool = False,
        inputs: InputStore | None = None,
    ) -> None:
        self.output_dir = output_dir
        # Where uploaded inputs are (ids become paths there); None: jobs carry no images.
        self.inputs = inputs
        self.crash_retries = crash_retries
        self.memory = memory
        self.allow_fallback = allow_fallback

    # -- a job starts -------------------------------------------------------------------------

    def _input_paths(self, job: Job) -> dict[str, Any]:
        """The worker's view of the job's inputs: stored files, fitted to the attempt's size
        by the worker (a lower-resolution rung refits the same originals)."""
        if job.inputs is None or self.inputs is None:
            return {}
        store, inputs = self.inputs, job.inputs
        return {
            "image_path": str(store.path(inputs.image)) if inputs.image else None,
            "last_image_path": str(store.path(inputs.last_image)) if inputs.last_image else None,
            "fit": inputs.fit,
        }

    def start_attempt(self, job: Job, now: float) -> Attempt:
        """The next attempt of a waiting job: what the generator runs, what the store keeps."""
        repair, fresh = repair_pending(job), fresh_worker_pending(job)
        started = _copy(job)
        started.status = JobStatus.RUNNING
        started.attempts += 1
        started.started_ts = job.started_ts or now
        started.stage, started.step, started.total_steps = Stage.LOAD, None, job.params.steps
        run = RunJob(
            job_id=job.id,
            model=job.model,
            params=job.params,
            options=job.options,
            output_dir=self.output_dir,
            attempt=started.attempts,
            decode_only_from=job.decode_only_from,
            applied_changes=tuple(c.text for c in job.changes),
            repair_model=repair,
            fresh_worker=fresh,
            **self._input_paths(job),
        )
        announced = ev.JobStarted(
            job_id=job.id,
            attempt=started.attempts,
            model=job.model,
            options=job.options.model_dump(mode="json"),
            inputs=job.inputs.model_dump(mode="json") if job.inputs is not None else None,
        )
        return Attempt(job=started, run=run, started=announced)

    def preflight_refused(self, job: Job, diagnosis: Diagnosis, facts: Facts) -> JobDecision:
        """Nothing on the ladder is predicted to fit: the job fails before it runs, alone (no
        transition: nothing failed but the estimate)."""
        return self._fail(Walk(facts), job, diagnosis, reason="pre-flight: not enough memory")

    # -- a job ends ---------------------------------------------------------------------------

    def succeeded(
        self, job: Job, done: Done, model: ModelChoice | None, facts: Facts
    ) -> JobDecision:
        walk = Walk(facts)
        ended = _copy(job)
        if model is not None:
            _record_model_choice(ended, model)
        ended.status = JobStatus.SUCCEEDED
        ended.finished_ts = facts.now
        ended.output_path = done.output_path
        ended.decode_only_from = None
        ended.stage = None  # finished: no stage; its status says how it ended
        changes = [c.as_dict() for c in ended.changes]
        ended.result = {
            "output": Path(done.output_path).name,
            "sidecar": Path(done.sidecar_path).name,
            "model": model.name if model is not None else job.model,
            "model_requested": job.model,
            "params_used": done.params_used.model_dump(mode="json"),
            "options_used": done.options_used.model_dump(mode="json"),
            "timings": {k.value: v for k, v in done.timings.items()},
            "peak_memory_bytes": done.peak_memory_bytes,
            "peak_growth_bytes": done.peak_growth_bytes,
            "changes": changes,
        }
        walk.publish(
            ev.JobSucceeded(
                job_id=job.id,
                output=Path(done.output_path).name,
                changes=changes,
                duration_s=round(facts.now - (ended.started_ts or ended.created_ts), 3),
            )
        )
        fallback = model.fallback if model is not None else None
        if fallback:
            walk.degraded["model"] = fallback
            if walk.state is State.READY:
                walk.fire(Trigger.DEGRADE, fallback)
        self._end_recovery(walk, ended, ok=True)
        if walk.degraded.pop(f"model:{job.model}", None) is not None:
            # The model loads again (a larger cap, memory freed): usable again.
            if walk.state is State.DEGRADED and not walk.degraded:
                walk.fire(Trigger.RESTORE, f"job {job.id} loaded {job.model}")
        # What the next similar request starts at: the rung a recovered job finally ran at.
        recovered = bool(ended.tried(ChangeOrigin.RECOVERY)) and bool(ended.rungs_tried)
        learn = Learning(
            rung=RungId(ended.rungs_tried[-1]) if recovered else None,
            options=done.options_used,
            params=done.params_used,
            peak_growth_bytes=done.peak_growth_bytes,
        )
        return walk.decide(ended, JobStatus.SUCCEEDED, "succeeded", learn=learn)

    def failed(self, job: Job, failed: Failed, diagnosis: Diagnosis, facts: Facts) -> JobDecision:
        """Capture, categorize, plan: a re-run with the next change, or the job fails alone."""
        walk = Walk(facts)
        report = failed.report
        if facts.state not in _SERVING_OR_RECOVERING:
            return self._fail(walk, job, diagnosis, reason=f"{facts.state.value}: not retried")
        # A MemoryError carries no message: its class is then the most telling word.
        detail = report.message[:200] or report.exc_type
        walk.fire(
            Trigger.FAIL, f"job {job.id} failed at {report.stage.value}: {detail}", diagnosis.code
        )
        walk.fire(Trigger.CATEGORIZE, diagnosis.category, diagnosis.code)
        step = self._plan(job, diagnosis, failed)
        if step is None:
            walk.recovering = None
            reason = f"not recoverable by a retry: {diagnosis.code}"
            return self._fail(walk, job, diagnosis, reason=reason, dismiss=True)
        if step.give_up:
            # Invariant: a job that fits at no rung fails alone, with its numbers; the service
            # stays up. A model that cannot even load is a capability missing (degraded, with
            # the reason) until a job of it succeeds. Halted is for infrastructure that keeps
            # failing (restart intensity), never for one job.
            walk.recovering = None
            final = step.final_error or diagnosis
            if report.stage is Stage.LOAD:
                walk.degraded[f"model:{job.model}"] = _unloadable(job.model, final)
            return self._fail(
                walk,
                job,
                final,
                reason=step.description,
                dismiss=True,
                code=diagnosis.code,
                result=job.changes[-1].rung if job.changes else None,
            )
        retried = _copy(job)
        step.apply(retried)
        walk.recovering = job.id
        walk.fire(Trigger.PLAN, step.description, diagnosis.code)
        name = step.change.rung if step.change is not None else "retry"
        walk.publish(ev.RecoveryAttempt(job_id=job.id, step=name, error_code=diagnosis.code))
        return self._retry(walk, retried, step.description, diagnosis.code, change=step.change)

    def cancelled(self, job: Job, facts: Facts) -> JobDecision:
        """The job ended cancelled (before it ran, while waiting for its model, or on the
        worker); when its re-run was to decide a recovery, the recovery ends with it."""
        walk = Walk(facts)
        ended = _copy(job)
        ended.status = JobStatus.CANCELLED
        ended.finished_ts = facts.now
        walk.publish(ev.JobCancelled(job_id=job.id))
        self._end_recovery(walk, ended, ok=False)
        return walk.decide(ended, JobStatus.CANCELLED, "cancelled")

    def worker_crashed(
        self, job: Job, report: ErrorReport, diagnosis: Diagnosis, facts: Facts
    ) -> JobDecision:
        """The worker died under a job: a re-run on a new worker (within bounds) or a fail.
        The child's own restart is the restart window's decision, not this one."""
        walk = Walk(facts)
        if walk.recovering == job.id:
            walk.recovering = None  # its re-run no longer decides anything: the child restarts
        if job.crash_retries >= self.crash_retries:
            return self._fail(walk, job, diagnosis, reason="the worker died too often")
        retried = _copy(job)
        retried.crash_retries += 1
        reason = f"the worker process died ({report.message}); retrying on a new worker"
        return self._retry(walk, retried, reason, diagnosis.code, change=None, after_crash=True)

    # -- a cancel is asked --------------------------------------------------------------------

    def cancel_requested(
        self, job: Job | None, running: Job | None, facts: Facts
    ) -> CancelDecision:
        if job is None:
            return CancelDecision(CancelKind.UNKNOWN)
        if job.terminal:
            return CancelDecision(CancelKind.REFUSED, job)
        if running is not None and running.id == job.id:
            return CancelDecision(CancelKind.RUNNING, running)
        return CancelDecision(CancelKind.NOW, job, self.cancelled(job, facts))

    # -- a model cannot be made available before it loads -------------------------------------

    def model_unavailable(self, code: ErrorCode, *, repaired: bool) -> ModelStep:
        """Damaged files are repaired once (not when this attempt's planned repair just ran);
        otherwise the registry's fallback stands in when allowed, else the job fails."""
        if code in _REPAIRABLE and not repaired:
            return ModelStep.REPAIR
        return ModelStep.FALLBACK if self.allow_fallback else ModelStep.FAIL

    # -- the parts ----------------------------------------------------------------------------

    def _plan(self, job: Job, diagnosis: Diagnosis, failed: Failed) -> RecoveryStep | None:
        memory = self.memory.plan(job, diagnosis, failed) if self.memory is not None else None
        return memory or plan_model_repair(job, diagnosis, failed)

    def _retry(
        self,
        walk: Walk,
        job: Job,
        reason: str,
        code: str,
        *,
        change: Change | None,
        after_crash: bool = False,
    ) -> JobDecision:
        job.status = JobStatus.RETRYING
        if change is not None:
            job.changes.append(change)
        walk.publish(
            ev.JobRetrying(
                job_id=job.id,
                attempt=job.attempts + 1,
                reason=reason,
                error_code=code,
                change=change.as_dict() if change is not None else None,
            )
        )
        attempt = NextAttempt(
            number=job.attempts + 1,
            reason=reason,
            error_code=code,
            changes=tuple(job.planned),
            decode_only_from=job.decode_only_from,
            after_crash=after_crash,
        )
        return walk.decide(job, JobStatus.RETRYING, reason, next_attempt=attempt)

    def _fail(
        self,
        walk: Walk,
        job: Job,
        diagnosis: Diagnosis,
        *,
        reason: str,
        dismiss: bool = False,
        code: str | None = None,
        result: str | None = None,
    ) -> JobDecision:
        ended = _copy(job)
        ended.status = JobStatus.FAILED
        ended.finished_ts = walk.now
        ended.error = diagnosis.user_error
        walk.publish(ev.JobFailed(job_id=job.id, error=diagnosis.user_error))
        if dismiss:
            walk.fire(
                walk.settled(Trigger.DISMISS, Trigger.DISMISS_DEGRADED),
                reason,
                code or diagnosis.code,
            )
        if result is not None:
            walk.publish(ev.RecoveryResult(job_id=job.id, step=result, ok=False, detail=reason))
        return walk.decide(ended, JobStatus.FAILED, reason)

    def _end_recovery(self, walk: Walk, job: Job, *, ok: bool) -> None:
        if walk.recovering != job.id or walk.state is not State.RECOVERING:
            return
        walk.recovering = None
        # Invariant: a recovery that worked leaves the service whole: what the job needed is
        # kept in the learned strategies and the job's own changes, not in degraded reasons
        # (degraded means a capability is missing, and pages whoever alerts on it).
        outcome = f"job {job.id} {'succeeded' if ok else 'was cancelled'} after recovery"
        walk.fire(walk.settled(Trigger.RECOVERED, Trigger.RECOVERED_DEGRADED), outcome)
        last = job.changes[-1].rung if job.changes else "retry"
        walk.publish(ev.RecoveryResult(job_id=job.id, step=last, ok=ok, detail=outcome))


def _record_model_choice(job: Job, choice: ModelChoice) -> None:
    """Repairs and fallbacks become changes of the job (once each, for its report)."""
    seen = {c.rung for c in job.changes}
    if choice.repaired and REPAIR_MODEL not in seen:
        job.changes.append(
            Change(
                rung=REPAIR_MODEL,
                text=choice.repaired,
                origin=ChangeOrigin.RECOVERY,
                attempt=job.attempts,
                action="redownload_model",
            )
        )
    if choice.fallback and FALLBACK_MODEL not in seen:
        job.changes.append(
            Change(
                rung=FALLBACK_MODEL,
                text=choice.fallback,
                origin=ChangeOrigin.RECOVERY,
                attempt=job.attempts,
                action="use_fallback_model",
                changes_output=True,
                before={"model": job.model},
                after={"model": choice.name},
            )
        )


def _unloadable(model: str, diagnosis: Diagnosis) -> str:
    message = str(diagnosis.user_error.get("message") or diagnosis.code)
    return f"{model} cannot be loaded here: {message}"
