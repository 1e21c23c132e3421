"""Jobs as the supervisor runs them: dispatch, and the job side of every decision.

`JobFlow` is owned by the supervisor and called only from its loop, so job state and the state
machine change together, one message at a time. It decides nothing: `JobDecider` says what
happens to a job (supervisor/supervision/job_decider.py); this starts attempts, writes the store
(through its worker thread: the loop never waits on SQLite) and publishes, in the decision's
order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, MutableMapping, Sequence
from typing import Protocol

import anyio

from actors.actor import Actor
from actors.generator import CancelJob
from supervisor.bus import events as ev
from supervisor.core.exceptions import ActorNotRunning, GenvisorError, MailboxFull
from supervisor.errors import Categorization, ErrorCode, Stage
from supervisor.errors.report import ErrorReport
from supervisor.jobs import AsyncJobStore, Job, JobStatus
from supervisor.recovery.diagnosis import Diagnosis
from supervisor.recovery.memory import MemoryRecovery
from supervisor.supervision.decisions import Facts, Fire, JobDecision
from supervisor.supervision.job_decider import JobDecider
from supervisor.supervision.lanes import GENERATOR, Lane
from supervisor.supervision.placement import place
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
        store: AsyncJobStore,
        *,
        publish: Callable[[ev.EventData], object],
        generator: Callable[[], Actor | None],
        decider: JobDecider,
        diagnose: Diagnose,
        memory: MemoryRecovery | None = None,
        clock: Callable[[], float] = time.time,
        lanes: Sequence[Lane] | None = None,
    ) -> None:
        """`lanes`: one per device of a `devices` list; None: one lane, `generator` (as ever)."""
        self.store = store
        self._publish = publish
        self.decider = decider
        self.diagnose = diagnose
        self.memory = memory
        self.clock = clock
        self.lanes: tuple[Lane, ...] = (
            tuple(lanes) if lanes else (Lane("", GENERATOR, generator, memory),)
        )
        # The job whose re-run decides whether a recovery worked (None: not recovering a job).
        self.recovering_job_id: str | None = None
        # The lane each job last started on (its bookkeeping goes to that device's memory).
        self._ran_on: dict[str, Lane] = {}

    @property
    def placing(self) -> bool:
        """Jobs are placed on one of several devices (a `devices` list)."""
        return len(self.lanes) > 1

    @property
    def running(self) -> Job | None:
        """The running job with one lane; with several, the first one running (see
        `running_jobs`)."""
        return next((lane.running for lane in self.lanes if lane.running is not None), None)

    def running_jobs(self) -> dict[str, Job]:
        """Each lane's running job, by device."""
        return {lane.device: lane.running for lane in self.lanes if lane.running is not None}

    def running_job(self, job_id: str) -> Job | None:
        """The job `job_id` when it is running on any device."""
        lane = self._lane_running(job_id)
        return lane.running if lane is not None else None

    def device_of(self, job_id: str | None) -> str | None:
        """The device the job last started on (None: not started, or one device)."""
        lane = self._ran_on.get(job_id) if job_id is not None and self.placing else None
        return lane.device if lane is not None else None

    def lane_of_child(self, child_id: str) -> Lane | None:
        return next((lane for lane in self.lanes if lane.child_id == child_id), None)

    def lane_of_device(self, device: str) -> Lane | None:
        return next((lane for lane in self.lanes if lane.device == device), None)

    def _lane_running(self, job_id: str) -> Lane | None:
        return next(
            (lane for lane in self.lanes if lane.running is not None and lane.running.id == job_id),
            None,
        )

    # -- dispatch -----------------------------------------------------------------------------

    async def dispatch(self, state: State) -> None:
        """Start the next job when the supervisor serves and a generator is free."""
        if self.placing:
            await self._dispatch_placed(state)
            return
        lane = self.lanes[0]
        if lane.running is not None:
            return
        generator = lane.actor()
        if generator is None:
            return
        # Invariant: the state is checked before pre-flight. Dispatch runs after every
        # supervisor message; pre-flight (learned strategies, estimates, store writes) runs only
        # when a job may start now, never again and again while recovering or halted.
        if state is State.RECOVERING:
            job = await self._recovering_job()
        elif state in (State.READY, State.DEGRADED):
            job = await self._next_preflighted(state, lane)
        else:
            return
        if job is None:
            return
        await self._start(job, lane, generator)

    async def _start(
        self, job: Job, lane: Lane, generator: Actor, placement: str | None = None
    ) -> bool:
        attempt = self.decider.start_attempt(job, self.clock())
        started = attempt.started
        if self.placing:
            started = started.model_copy(update={"device": lane.device, "placement": placement})
        # Invariant: the running row takes its place in the store's order before the generator
        # hears of the job (every later read and the outcome's write come after it), and is
        # written while the worker starts, not before; the generator is told, `running` set and
        # job.started published with no await between, so job.started comes before anything
        # the attempt itself publishes.
        try:
            async with self.store.saving(attempt.job):
                generator.tell_nowait(attempt.run)
                lane.running = attempt.job
                self._ran_on[job.id] = lane
                self._publish(started)
        except (ActorNotRunning, MailboxFull):
            await self.store.save(job)  # not started after all: waiting, as it was
            return False
        return True

    async def _dispatch_placed(self, state: State) -> None:
        """Several devices: each waiting job, in queue order, is placed by fit; it starts when
        its device is free (the next ones wait behind it: the queue's order holds)."""
        while any(lane.running is None and lane.actor() is not None for lane in self.lanes):
            if state is State.RECOVERING:
                job = await self._recovering_job()
            elif state in (State.READY, State.DEGRADED):
                job = await self.store.next_queued()
            else:
                return
            if job is None:
                return
            first = job.attempts == 0 and job.requested is None and self.memory is not None
            views = [lane.view(job, preflight=first) for lane in self.lanes]
            placed = place(job.model, views)
            if placed is None:
                return
            lane = self.lane_of_device(placed.device)
            generator = lane.actor() if lane is not None else None
            if lane is None or generator is None or lane.running is not None:
                return  # its device is busy: it waits for it
            job = lane.on_device(job)
            if first:
                refused = await self._preflight(job, state, lane)
                if refused:
                    continue
            log.info("job %s: %s", job.id, placed.reason)
            if not await self._start(job, lane, generator, placed.reason):
                return
            if state is State.RECOVERING:
                return

    async def _recovering_job(self) -> Job | None:
        """While recovering only the job whose re-run decides the recovery may start (it ran
        before: no pre-flight), wherever it stands in the queue."""
        if self.recovering_job_id is None:
            return None
        job = await self.store.get(self.recovering_job_id)
        return job if job is not None and job.status in _WAITING else None

    async def _next_preflighted(self, state: State, lane: Lane) -> Job | None:
        """The next waiting job; a first attempt goes through learned rungs and pre-flight,
        and one that can not fit anywhere fails here, before it runs."""
        while (job := await self.store.next_queued()) is not None:
            if job.attempts > 0 or self.memory is None or job.requested is not None:
                return job
            if not await self._preflight(job, state, lane):
                return job  # saved with its new status by dispatch, or by the next prepare
        return None

    async def _preflight(self, job: Job, state: State, lane: Lane) -> bool:
        """Learned rung and pre-flight on the lane's device (mutates the job); True when it
        was refused there (then it has failed, before it ran)."""
        memory = lane.memory or self.memory
        assert memory is not None
        job.requested = job.params
        refused = memory.prepare(job)
        if refused is None:
            return False
        report = ErrorReport(
            exc_type="supervisor.recovery.memory.PreflightRefused",
            message=f"not enough memory: {refused.message}",
            stage=Stage.LOAD,
            device=job.options.device,
            job_id=job.id,
        )
        verdict = Categorization.of(ErrorCode.VRAM_EXHAUSTED, rule="preflight")
        diagnosis = self.diagnose(
            report,
            verdict=verdict,
            facts={"width": job.params.width, "height": job.params.height},
        )
        await self.carry_out(self.decider.preflight_refused(job, diagnosis, self.facts(state)))
        return True

    def progress(self, job_id: str, stage: Stage, step: int | None) -> None:
        lane = self._lane_running(job_id)
        if lane is not None and lane.running is not None:
            lane.running.stage, lane.running.step = stage, step

    # -- decisions ----------------------------------------------------------------------------

    def facts(self, state: State, degraded: MutableMapping[str, str] | None = None) -> Facts:
        return Facts(
            state=state,
            now=self.clock(),
            degraded=dict(degraded or {}),
            recovering_job_id=self.recovering_job_id,
        )

    def take_running(self, job_id: str) -> Job | None:
        lane = self._lane_running(job_id)
        if lane is None:
            return None
        job, lane.running = lane.running, None
        return job

    def take_running_of(self, child_id: str) -> Job | None:
        """The job running on the generator that exited; None for any other child.

        Invariant: a job is taken from its lane only by its own generator's exit. Another
        child's crash (the VRAM monitor, the model loader) leaves the worker running the job;
        taking it would re-run a job that goes on, and drop its real outcome as a late one. A
        job waiting on a crashed loader ends through its generator (the ask fails)."""
        lane = self.lane_of_child(child_id)
        if lane is None:
            return None
        job, lane.running = lane.running, None
        return job

    async def carry_out(
        self,
        decision: JobDecision,
        *,
        fire: Callable[[Fire], None] | None = None,
        degraded: MutableMapping[str, str] | None = None,
    ) -> None:
        """The job's row takes its place in the store's order first; then the degraded reasons
        change and the steps are fired and published in order, with no await between them (one
        state change, seen whole); then the row is written. Every store call made after the
        steps (a client's GET after job.succeeded, the next dispatch) comes after the write:
        the store's thread takes calls in turn (`AsyncJobStore.saving`)."""
        async with self.store.saving(decision.job, even_on_error=True):
            self.recovering_job_id = decision.recovering_job_id
            if degraded is not None:
                degraded.update(decision.degrade)
                for key in decision.restore:
                    degraded.pop(key, None)
            for step in decision.steps:
                if isinstance(step, Fire):
                    if fire is None:
                        raise RuntimeError(f"a transition ({step.trigger}) outside the supervisor")
                    fire(step)
                else:
                    self._publish(step)
        # Bookkeeping for the next jobs (learned rung, calibration) after the person is told,
        # in a worker thread: a SQLite commit per job would otherwise hold the loop (and every
        # subscriber waiting for the event just published) for milliseconds. Awaited, so the
        # next job's pre-flight sees what this one taught.
        ran_on = self._ran_on.get(decision.job.id)
        if decision.job.terminal:
            self._ran_on.pop(decision.job.id, None)
        learn = decision.learn
        memory = ran_on.memory if ran_on is not None and ran_on.memory else self.memory
        if learn is not None and memory is not None:
            job = decision.job

            def bookkeeping() -> None:
                if learn.rung is not None:
                    memory.remember(job, learn.rung)
                memory.measured(job, learn.options, learn.params, learn.peak_growth_bytes)

            await anyio.to_thread.run_sync(bookkeeping)

    def cancel_running(self, job_id: str) -> None:
        """Ask the generator to cancel the running job; its outcome (cancelled) follows."""
        lane = self._lane_running(job_id)
        generator = lane.generator() if lane is not None else None
        if generator is not None:
            generator.tell_nowait(CancelJob(job_id))
