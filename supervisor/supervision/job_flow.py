"""Jobs as the supervisor runs them: dispatch, outcomes, retries after a worker died.

`JobFlow` is owned by the supervisor and called only from its loop, so job state and the state
machine change together, one message at a time. It decides *what* happens to a job; the
supervisor fires the transitions.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from actors.actor import Actor
from actors.generator import CancelJob, JobOutcome, ModelChoice, RunJob
from supervisor.bus import events as ev
from supervisor.core.exceptions import ActorNotRunning, GenvisorError, MailboxFull
from supervisor.errors import Categorization, ErrorCode, Stage
from supervisor.errors.report import ErrorReport
from supervisor.jobs import (
    FALLBACK_MODEL,
    REPAIR_MODEL,
    Change,
    ChangeOrigin,
    Job,
    JobStatus,
    JobStore,
)
from supervisor.recovery.diagnosis import Diagnosis
from supervisor.recovery.memory import MemoryRecovery
from supervisor.recovery.model_repair import fresh_worker_pending, repair_pending
from supervisor.supervision.state_machine import State

__all__ = ["CancelRefused", "Diagnose", "JobFlow"]

log = logging.getLogger("genvisor.jobs")


class Diagnose(Protocol):
    def __call__(
        self,
        report: ErrorReport,
        *,
        applied: Sequence[str] = (),
        facts: dict[str, object] | None = None,
        verdict: Categorization | None = None,
    ) -> Diagnosis: ...


class CancelRefused(GenvisorError):
    def __init__(self, *, job_id: str, status: str) -> None:
        self.job_id = job_id
        self.status = status
        super().__init__(f"job {job_id} is already {status}: nothing to cancel")


# What `JobStore.next_queued` hands out: a job waiting for its (next) attempt.
_WAITING = frozenset({JobStatus.QUEUED, JobStatus.RETRYING, JobStatus.INTERRUPTED})


class JobFlow:
    def __init__(
        self,
        store: JobStore,
        *,
        publish: Callable[[ev.EventData], object],
        generator: Callable[[], Actor | None],
        output_dir: Path,
        crash_retries: int,
        diagnose: Diagnose,
        memory: MemoryRecovery | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self._publish = publish
        self._generator = generator
        self.output_dir = output_dir
        self._crash_retries = crash_retries
        self.diagnose = diagnose
        self.memory = memory
        self._clock = clock
        self.running: Job | None = None
        # The job whose re-run decides whether a recovery worked (None: not recovering a job).
        self.recovering_job_id: str | None = None

    # -- dispatch -----------------------------------------------------------------------------

    def dispatch(self, state: State) -> None:
        """Start the next job when the supervisor serves and the generator is free."""
        if self.running is not None:
            return
        generator = self._generator()
        if generator is None or not generator.running:
            return
        # Invariant: the state is checked before pre-flight. Dispatch runs after every
        # supervisor message; pre-flight (learned strategies, estimates, store writes) runs only
        # when a job may start now, never again and again while recovering or halted.
        if state is State.RECOVERING:
            job = self._recovering_job()
        elif state in (State.READY, State.DEGRADED):
            job = self._next_preflighted()
        else:
            return
        if job is None:
            return
        repair, fresh = repair_pending(job), fresh_worker_pending(job)
        job.status = JobStatus.RUNNING
        job.attempts += 1
        job.started_ts = job.started_ts or self._clock()
        job.stage, job.step, job.total_steps = Stage.LOAD, None, job.params.steps
        message = RunJob(
            job_id=job.id,
            model=job.model,
            params=job.params,
            options=job.options,
            output_dir=self.output_dir,
            attempt=job.attempts,
            decode_only_from=job.decode_only_from,
            applied_changes=tuple(c.text for c in job.changes),
            repair_model=repair,
            fresh_worker=fresh,
        )
        try:
            generator.tell_nowait(message)
        except (ActorNotRunning, MailboxFull):
            return
        self.store.save(job)
        self.running = job
        self._publish(
            ev.JobStarted(
                job_id=job.id,
                attempt=job.attempts,
                model=job.model,
                options=job.options.model_dump(mode="json"),
            )
        )

    def _recovering_job(self) -> Job | None:
        """While recovering only the job whose re-run decides the recovery may start (it ran
        before: no pre-flight), wherever it stands in the queue."""
        if self.recovering_job_id is None:
            return None
        job = self.store.get(self.recovering_job_id)
        return job if job is not None and job.status in _WAITING else None

    def _next_preflighted(self) -> Job | None:
        """The next waiting job; a first attempt goes through learned rungs and pre-flight,
        and one that can not fit anywhere fails here, before it runs."""
        while (job := self.store.next_queued()) is not None:
            if job.attempts > 0 or self.memory is None or job.requested is not None:
                return job
            job.requested = job.params
            refused = self.memory.prepare(job)
            if refused is None:
                return job  # saved with its new status by dispatch, or by the next prepare
            report = ErrorReport(
                exc_type="supervisor.recovery.memory.PreflightRefused",
                message=f"not enough memory: {refused.message}",
                stage=Stage.LOAD,
                device=job.options.device,
                job_id=job.id,
            )
            verdict = Categorization.of(ErrorCode.VRAM_EXHAUSTED, rule="preflight")
            self.fail(
                job,
                self.diagnose(
                    report,
                    verdict=verdict,
                    facts={"width": job.params.width, "height": job.params.height},
                ),
            )
        return None

    def progress(self, job_id: str, stage: Stage, step: int | None) -> None:
        if self.running is not None and self.running.id == job_id:
            self.running.stage, self.running.step = stage, step

    # -- outcomes -----------------------------------------------------------------------------

    def take_running(self, job_id: str) -> Job | None:
        job = self.running
        if job is None or job.id != job_id:
            return None
        self.running = None
        return job

    def succeed(self, job: Job, outcome: JobOutcome) -> None:
        done = outcome.done
        assert done is not None
        choice = outcome.model
        model_used = choice.name if choice is not None else job.model
        if choice is not None:
            self._record_model_choice(job, choice)
        job.status = JobStatus.SUCCEEDED
        job.finished_ts = self._clock()
        job.output_path = done.output_path
        job.decode_only_from = None
        job.stage = None  # finished: no stage; its status says how it ended
        job.result = {
            "output": Path(done.output_path).name,
            "sidecar": Path(done.sidecar_path).name,
            "model": model_used,
            "model_requested": job.model,
            "params_used": done.params_used.model_dump(mode="json"),
            "options_used": done.options_used.model_dump(mode="json"),
            "timings": {k.value: v for k, v in done.timings.items()},
            "peak_memory_bytes": done.peak_memory_bytes,
            "peak_growth_bytes": done.peak_growth_bytes,
            "changes": [c.as_dict() for c in job.changes],
        }
        self.store.save(job)
        self._publish(
            ev.JobSucceeded(
                job_id=job.id,
                output=Path(done.output_path).name,
                changes=[c.as_dict() for c in job.changes],
                duration_s=round(job.finished_ts - (job.started_ts or job.created_ts), 3),
            )
        )
        # Bookkeeping for the next jobs (learned rung, calibration) after the person is told.
        if self.memory is not None:
            self.memory.succeeded(job)
            self.memory.measured(job, done.options_used, done.params_used, done.peak_growth_bytes)

    def _record_model_choice(self, job: Job, choice: ModelChoice) -> None:
        """Repairs and stand-ins become changes of the job (once each, for its report)."""
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
        if choice.substitution and FALLBACK_MODEL not in seen:
            job.changes.append(
                Change(
                    rung=FALLBACK_MODEL,
                    text=choice.substitution,
                    origin=ChangeOrigin.RECOVERY,
                    attempt=job.attempts,
                    action="use_fallback_model",
                    changes_output=True,
                    before={"model": job.model},
                    after={"model": choice.name},
                )
            )

    def fail(self, job: Job, diagnosis: Diagnosis) -> None:
        job.status = JobStatus.FAILED
        job.finished_ts = self._clock()
        job.error = diagnosis.user_error
        self.store.save(job)
        self._publish(ev.JobFailed(job_id=job.id, error=diagnosis.user_error))

    def retry(self, job: Job, *, reason: str, code: str, change: Change | None) -> None:
        job.status = JobStatus.RETRYING
        if change is not None:
            job.changes.append(change)
        self.store.save(job)
        self._publish(
            ev.JobRetrying(
                job_id=job.id,
                attempt=job.attempts + 1,
                reason=reason,
                error_code=code,
                change=change.as_dict() if change is not None else None,
            )
        )

    def cancelled(self, job: Job) -> None:
        job.status = JobStatus.CANCELLED
        job.finished_ts = self._clock()
        self.store.save(job)
        self._publish(ev.JobCancelled(job_id=job.id))

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a waiting job at once, or ask the generator to stop the running one."""
        job = self.store.get(job_id)
        if job is None:
            return None
        if job.terminal:
            raise CancelRefused(job_id=job_id, status=job.status.value)
        if self.running is not None and self.running.id == job_id:
            generator = self._generator()
            if generator is not None:
                generator.tell_nowait(CancelJob(job_id))
            return self.running
        self.cancelled(job)
        return job

    def worker_died(self, report: ErrorReport, diagnosis: Diagnosis) -> None:
        """The generator crashed: the job it ran is retried (within bounds) or failed."""
        job, self.running = self.running, None
        if job is None:
            return
        if job.crash_retries < self._crash_retries:
            job.crash_retries += 1
            self.retry(
                job,
                reason=f"the worker process died ({report.message}); retrying on a new worker",
                code=diagnosis.code,
                change=None,
            )
        else:
            self.fail(job, diagnosis)
