"""The failure pipeline for jobs, as the supervisor walks it (a part of `Supervisor`).

A job's outcome arrives as a message from the generator; a failure is captured (the worker's
ErrorReport), categorized, planned (the recovery planner: the VRAM ladder), and either re-run
with the change applied, explained to the person, or escalated. Every step fires the
supervisor's state machine, from the supervisor's own loop.
"""

from __future__ import annotations

from collections.abc import Callable

from actors.generator import JobOutcome
from supervisor.bus import events as ev
from supervisor.errors import Stage
from supervisor.jobs import Change, Job
from supervisor.recovery.diagnosis import Diagnosis
from supervisor.recovery.planner import RecoveryPlanner
from supervisor.supervision.job_flow import JobFlow
from supervisor.supervision.state_machine import State, StateMachine, Trigger

__all__ = ["JobFailurePipeline"]


class JobFailurePipeline:
    # Provided by Supervisor.
    jobs: JobFlow | None
    _publish: Callable[[ev.EventData], object]
    machine: StateMachine
    degraded_reasons: dict[str, str]
    _plan_recovery: RecoveryPlanner

    @property
    def state(self) -> State:
        return self.machine.state

    def _fire(self, trigger: Trigger, *, reason: str, error_code: str | None = None) -> None:
        self.machine.fire(trigger, reason=reason, error_code=error_code)

    def _on_job_outcome(self, outcome: JobOutcome) -> None:
        assert self.jobs is not None
        job = self.jobs.take_running(outcome.job_id)
        if job is None:
            return
        if outcome.cancelled is not None:
            self.jobs.cancelled(job)
            self._end_job_recovery(job, ok=False)
        elif outcome.done is not None:
            self.jobs.succeed(job, outcome)
            stand_in = outcome.model.substitution if outcome.model is not None else None
            if stand_in:
                self.degraded_reasons["model"] = stand_in
                if self.state is State.READY:
                    self._fire(Trigger.DEGRADE, reason=stand_in)
            self._end_job_recovery(job, ok=True)
            if self.degraded_reasons.pop(f"model:{job.model}", None) is not None:
                # The model loads again (a larger cap, memory freed): usable again.
                if self.state is State.DEGRADED and not self.degraded_reasons:
                    self._fire(Trigger.RESTORE, reason=f"job {job.id} loaded {job.model}")
        elif outcome.failed is not None:
            self._job_failed(job, outcome)

    def _job_failed(self, job: Job, outcome: JobOutcome) -> None:
        """The failure pipeline for a job: capture, categorize, plan, re-run or explain."""
        assert self.jobs is not None
        assert outcome.failed is not None
        report = outcome.failed.report
        applied = tuple(c.action for c in job.changes if c.action)
        diagnosis = self.jobs.diagnose(report, applied=applied)
        # A MemoryError carries no message: its class is then the most telling word.
        detail = report.message[:200] or report.exc_type
        reason = f"job {job.id} failed at {report.stage.value}: {detail}"
        if self.state not in (State.READY, State.DEGRADED, State.RECOVERING):
            self.jobs.fail(job, diagnosis)
            return
        self._fire(Trigger.FAIL, reason=reason, error_code=diagnosis.code)
        self._fire(Trigger.CATEGORIZE, reason=diagnosis.category, error_code=diagnosis.code)
        step = self._plan_recovery(job, diagnosis, outcome.failed)
        if step is not None and step.give_up:
            # Invariant: a job that fits at no rung fails alone, with its numbers; the service
            # stays up. A model that cannot even load is a capability missing (degraded, with
            # the reason) until a job of it succeeds. Halted is for infrastructure that keeps
            # failing (restart intensity), never for one job.
            self.jobs.recovering_job_id = None
            final = step.final_error or diagnosis
            self.jobs.fail(job, final)
            if report.stage is Stage.LOAD:
                self.degraded_reasons[f"model:{job.model}"] = _unloadable(job.model, final)
            self._fire(
                Trigger.DISMISS_DEGRADED if self.degraded_reasons else Trigger.DISMISS,
                reason=step.description,
                error_code=diagnosis.code,
            )
            if job.changes:
                last = _step_name(job.changes[-1])
                self._publish(
                    ev.RecoveryResult(job_id=job.id, step=last, ok=False, detail=step.description)
                )
            return
        if step is None:
            self.jobs.recovering_job_id = None
            self.jobs.fail(job, diagnosis)
            self._fire(
                Trigger.DISMISS_DEGRADED if self.degraded_reasons else Trigger.DISMISS,
                reason=f"not recoverable by a retry: {diagnosis.code}",
                error_code=diagnosis.code,
            )
            return
        step.apply(job)
        self.jobs.recovering_job_id = job.id
        self._fire(Trigger.PLAN, reason=step.description, error_code=diagnosis.code)
        self._publish(
            ev.RecoveryAttempt(
                job_id=job.id, step=_step_name(step.change), error_code=diagnosis.code
            )
        )
        self.jobs.retry(job, reason=step.description, code=diagnosis.code, change=step.change)

    def _end_job_recovery(self, job: Job, *, ok: bool) -> None:
        assert self.jobs is not None
        if self.jobs.recovering_job_id != job.id or self.state is not State.RECOVERING:
            return
        self.jobs.recovering_job_id = None
        # Invariant: a recovery that worked leaves the service whole: what the job needed is
        # kept in the learned strategies and the job's own changes, not in degraded reasons
        # (degraded means a capability is missing, and pages whoever alerts on it).
        outcome = f"job {job.id} {'succeeded' if ok else 'was cancelled'} after recovery"
        self._fire(
            Trigger.RECOVERED_DEGRADED if self.degraded_reasons else Trigger.RECOVERED,
            reason=outcome,
        )
        last = _step_name(job.changes[-1]) if job.changes else "retry"
        self._publish(ev.RecoveryResult(job_id=job.id, step=last, ok=ok, detail=outcome))


def _step_name(change: Change | None) -> str:
    """The rung (or repair) a change made, as the recovery events name it."""
    return change.rung if change is not None else "retry"


def _unloadable(model: str, diagnosis: Diagnosis) -> str:
    message = str(diagnosis.user_error.get("message") or diagnosis.code)
    return f"{model} cannot be loaded here: {message}"
