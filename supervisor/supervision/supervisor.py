"""The supervisor: it owns the state machine, runs its children and walks every failure.

It is itself an actor. Invariant: the state machine is fired only from this actor's loop
(`handle`, `on_start`, `on_stop`), one trigger at a time; children and API handlers reach it
by messages. What happens to a job is the `JobDecider`'s decision; the supervisor carries it
out: the job's row first (awaited on the store's thread, the loop runs on meanwhile), then the
decision's transitions and events with no await between them. `snapshot()` may be called from
any task: it reads, never awaits, and returns copies, so it never sees a decision half fired.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence

import anyio

from actors.actor import Actor
from actors.generator import JobOutcome
from supervisor import __version__
from supervisor.bus import events as ev
from supervisor.core.exceptions import ActorNotRunning, InvalidTransition, first_leaf
from supervisor.errors.report import ErrorReport, Stage
from supervisor.jobs import Job
from supervisor.supervision.child_spec import ChildSpec
from supervisor.supervision.child_status import ChildRecord, ChildState
from supervisor.supervision.decisions import CancelKind, Fire, JobDecision
from supervisor.supervision.device_service import DeviceService
from supervisor.supervision.job_decider import applied_actions
from supervisor.supervision.job_flow import CancelRefused, JobFlow
from supervisor.supervision.messages import (
    CancelRequest,
    ChildExited,
    ChildStarted,
    ClearDegraded,
    Degrade,
    JobSubmitted,
    Reset,
    ResetRefused,
    RestartDue,
    SupervisorSnapshot,
)
from supervisor.supervision.restart_window import ExitKind, decide_restart
from supervisor.supervision.state_machine import State, StateMachine, TransitionRecord, Trigger

__all__ = ["Supervisor"]

log = logging.getLogger("genvisor.supervisor")

ErrorCodeOf = Callable[[ErrorReport], str | None]


# -- the supervisor -----------------------------------------------------------------------------


class Supervisor(DeviceService, Actor):
    reply_errors = (InvalidTransition, CancelRefused, ResetRefused)

    def __init__(
        self,
        specs: Sequence[ChildSpec],
        *,
        publish: Callable[[ev.EventData], object],
        error_code_of: ErrorCodeOf | None = None,
        history_size: int = 200,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        jobs: JobFlow | None = None,
    ) -> None:
        super().__init__("supervisor", mailbox_size=256)
        ids = [s.id for s in specs]
        if len(set(ids)) != len(ids):
            raise ValueError(f"child ids must be unique, got {ids}")
        self._publish = publish
        self._error_code_of = error_code_of or (lambda report: None)
        self._clock = clock
        self._wall = wall_clock
        self._rng = rng or random.Random()
        self.machine = StateMachine(
            history_size=history_size, clock=wall_clock, on_transition=self._announce
        )
        self.children: dict[str, ChildRecord] = {s.id: ChildRecord(spec=s) for s in specs}
        self.degraded_reasons: dict[str, str] = {}
        # The jobs: dispatch and the job side of decisions; `jobs.decider` decides.
        self.jobs = jobs
        self.started_at = wall_clock()
        # Set once every child has started after a boot, a restart or a reset.
        self._settled: anyio.Event | None = None

    def child(self, child_id: str) -> Actor | None:
        record = self.children.get(child_id)
        return record.actor if record is not None else None

    # -- lifecycle ----------------------------------------------------------------------------

    async def wait_settled(self) -> State:
        """Wait until no child is starting or restarting; return the state then."""
        if self._settled is None:
            self._settled = anyio.Event()
        await self._settled.wait()
        return self.state

    def _unsettle(self) -> None:
        # Invariant: a waiter never holds an event that is replaced before it is set.
        if self._settled is None or self._settled.is_set():
            self._settled = anyio.Event()

    def _settle(self) -> None:
        if self._settled is not None:
            self._settled.set()

    async def on_start(self) -> None:
        self._unsettle()
        for record in self.children.values():
            self._start_child(record)

    async def on_stop(self) -> None:
        self._fire(Trigger.STOP, reason="shutdown requested")
        for record in reversed(list(self.children.values())):
            await self._stop_child(record)
        self._fire(Trigger.STOPPED, reason="all children stopped")

    def _start_child(self, record: ChildRecord) -> None:
        record.generation += 1
        record.state = ChildState.STARTING
        record.done = anyio.Event()
        self.spawn(lambda: self._run_child(record, record.generation), name=record.spec.id)

    async def _run_child(self, record: ChildRecord, generation: int) -> None:
        kind, report = ExitKind.NORMAL, None
        scope: anyio.CancelScope | None = None
        try:
            # Invariant: a factory that raises is a child that failed to start (restarted
            # within its intensity), never an exception that takes the supervisor down.
            actor = record.spec.start()
            record.actor = actor
            with anyio.CancelScope() as scope:
                record.scope = scope
                async with anyio.create_task_group() as tg:
                    await tg.start(_run_actor, actor)
                    self._tell(ChildStarted(record.spec.id, generation))
        except Exception as exc:  # an ExceptionGroup from the task group, or a failed start
            kind = ExitKind.ABNORMAL
            report = ErrorReport.from_exception(first_leaf(exc), stage=Stage.WORKER)
        finally:
            if record.done is not None:
                record.done.set()
        if scope is not None and scope.cancelled_caught:
            return
        self._tell(ChildExited(record.spec.id, generation, kind, report))

    async def _stop_child(self, record: ChildRecord) -> None:
        if record.actor is None or record.state not in (ChildState.RUNNING, ChildState.STARTING):
            return
        record.state = ChildState.STOPPING
        record.actor.stop()
        done = record.done
        assert done is not None  # Invariant: set by _start_child before the actor exists
        with anyio.move_on_after(record.spec.shutdown_timeout_s):
            await done.wait()
        if not done.is_set() and record.scope is not None:
            log.warning(
                "child %s did not stop within %.1f s: cancelled",
                record.spec.id,
                record.spec.shutdown_timeout_s,
            )
            record.scope.cancel()
            await done.wait()
        record.state = ChildState.STOPPED
        self._publish(ev.ActorStopped(actor=record.spec.id))

    def _tell(self, message: object) -> None:
        try:
            self.tell_nowait(message)
        except ActorNotRunning:
            pass  # the supervisor is stopping; on_stop waits for children itself

    # -- the loop -----------------------------------------------------------------------------

    async def handle(self, message: object) -> object:
        try:
            return await self._handle(message)
        finally:
            if self.jobs is not None:
                await self.jobs.dispatch(self.state)

    async def _handle(self, message: object) -> object:
        match message:
            case JobSubmitted():
                pass  # dispatch runs after every message
            case JobOutcome():
                await self._on_job_outcome(message)
            case CancelRequest():
                return await self._cancel(message.job_id) if self.jobs is not None else None
            case ChildStarted():
                self._on_child_started(message)
            case ChildExited():
                await self._on_child_exited(message)
            case RestartDue():
                record = self.children[message.child_id]
                if record.generation == message.generation and self.state is State.RECOVERING:
                    self._start_child(record)
            case Reset():
                return self._reset_device(message.reason, message.device)
            case Degrade():
                self.degraded_reasons[message.key] = message.reason
                if self.state is State.READY:
                    self._fire(Trigger.DEGRADE, reason=message.reason)
            case ClearDegraded():
                self.degraded_reasons.pop(message.key, None)
                if self.state is State.DEGRADED and not self.degraded_reasons:
                    self._fire(Trigger.RESTORE, reason=f"{message.key} cleared")
            case _:
                raise TypeError(f"supervisor got an unknown message {message!r}")
        return None

    def _on_child_started(self, message: ChildStarted) -> None:
        record = self.children[message.child_id]
        if record.generation != message.generation:
            return
        record.state = ChildState.RUNNING
        pid = record.actor.describe().get("pid") if record.actor is not None else None
        self._publish(ev.ActorStarted(actor=record.spec.id, pid=pid))
        self._device_back(record.spec.id)
        if any(
            r.state is not ChildState.RUNNING
            for r in self.children.values()
            if r.state not in (ChildState.STOPPED, ChildState.FAILED)
        ):
            return
        if self.state is State.STARTING:
            self._fire(
                Trigger.STARTED_DEGRADED if self.degraded_reasons else Trigger.STARTED,
                reason="all children started",
            )
            self._settle()
        elif self.state is State.RECOVERING:
            self._fire(
                Trigger.RECOVERED_DEGRADED if self.degraded_reasons else Trigger.RECOVERED,
                reason=f"{record.spec.id} restarted",
            )
            self._settle()

    async def _on_child_exited(self, message: ChildExited) -> None:
        record = self.children[message.child_id]
        if record.generation != message.generation or record.state is ChildState.STOPPING:
            return
        record.last_error = message.report
        record.state = ChildState.EXITED
        code = self._error_code_of(message.report) if message.report is not None else None
        jobs = self.jobs
        job = jobs.take_running_of(record.spec.id) if jobs and message.report else None
        if self.jobs is not None and job is not None and message.report is not None:
            diagnosis = self.jobs.diagnose(message.report)
            facts = self.jobs.facts(self.state, self.degraded_reasons)
            await self._carry_out(
                self.jobs.decider.worker_crashed(job, message.report, diagnosis, facts)
            )
        what = message.report.message if message.report is not None else "exited normally"
        self._publish(ev.ActorCrashed(actor=record.spec.id, error_code=code, message=what))
        if self.state in (State.HALTED, State.STOPPING, State.STOPPED):
            return  # stays down; an operator reset restarts it
        self._unsettle()
        self._fire(Trigger.FAIL, reason=f"{record.spec.id}: {what}", error_code=code)
        self._fire(Trigger.CATEGORIZE, reason=f"exit {message.kind.value}", error_code=code)
        decision = decide_restart(
            record.spec, record.restart_history, self._clock(), message.kind, self._rng
        )
        record.restart_history = decision.history
        if decision.escalate:
            record.state = ChildState.FAILED
            if not self._out_of_service(record.spec.id, decision.reason, code):
                self._fire(Trigger.GIVE_UP, reason=decision.reason, error_code=code)
            return
        if not decision.restart:
            record.state = ChildState.STOPPED
            self._fire(
                Trigger.DISMISS_DEGRADED if self.degraded_reasons else Trigger.DISMISS,
                reason=decision.reason,
            )
            return
        record.state = ChildState.RESTARTING
        self._fire(
            Trigger.PLAN,
            reason=f"restart {record.spec.id} in {decision.delay_s:.2f} s ({decision.reason})",
            error_code=code,
        )
        self._publish(
            ev.ActorRestarted(
                actor=record.spec.id,
                restarts_in_window=decision.restarts_in_window,
                delay_s=decision.delay_s,
            )
        )
        generation = record.generation
        self.spawn(lambda: self._restart_after(decision.delay_s, record.spec.id, generation))

    async def _restart_after(self, delay_s: float, child_id: str, generation: int) -> None:
        await anyio.sleep(delay_s)
        self._tell(RestartDue(child_id, generation))

    def _reset(self, reason: str) -> State:
        self._fire(Trigger.RESET, reason=reason)  # InvalidTransition unless halted
        self._unsettle()
        self._all_back_in_service()
        for record in self.children.values():
            record.restart_history = ()
            if record.state in (ChildState.FAILED, ChildState.EXITED, ChildState.RESTARTING):
                self._start_child(record)
        if all(r.state in (ChildState.RUNNING, ChildState.STOPPED) for r in self.children.values()):
            self._fire(Trigger.STARTED, reason="nothing to restart")
            self._settle()
        return self.state

    # -- jobs: the decider decides, the supervisor carries out ----------------------------------

    async def _on_job_outcome(self, outcome: JobOutcome) -> None:
        assert self.jobs is not None
        jobs = self.jobs
        job = jobs.take_running(outcome.job_id)
        if job is None:
            return  # a late outcome of a job already decided (e.g. its worker died)
        facts = jobs.facts(self.state, self.degraded_reasons)
        if outcome.cancelled is not None:
            decision = jobs.decider.cancelled(job, facts)
        elif outcome.done is not None:
            decision = jobs.decider.succeeded(job, outcome.done, outcome.model, facts)
        elif outcome.failed is not None:
            report = outcome.failed.report
            diagnosis = jobs.diagnose(report, applied=applied_actions(job))
            decision = jobs.decider.failed(job, outcome.failed, diagnosis, facts)
        else:
            return
        await self._carry_out(decision)

    async def _cancel(self, job_id: str) -> Job | None:
        """Cancel a waiting job at once, or ask the generator to cancel the running one."""
        assert self.jobs is not None
        jobs = self.jobs
        job = await jobs.store.get(job_id)
        facts = jobs.facts(self.state, self.degraded_reasons)
        cancel = jobs.decider.cancel_requested(job, jobs.running_job(job_id), facts)
        if cancel.kind is CancelKind.REFUSED and cancel.job is not None:
            raise CancelRefused(job_id=job_id, status=cancel.job.status.value)
        if cancel.kind is CancelKind.RUNNING:
            jobs.cancel_running(job_id)
        if cancel.decision is not None:
            await self._carry_out(cancel.decision)
            return cancel.decision.job
        return cancel.job

    async def _carry_out(self, decision: JobDecision) -> None:
        assert self.jobs is not None
        await self.jobs.carry_out(decision, fire=self._fire_step, degraded=self.degraded_reasons)

    # -- state --------------------------------------------------------------------------------

    @property
    def state(self) -> State:
        return self.machine.state

    def _fire(self, trigger: Trigger, *, reason: str, error_code: str | None = None) -> None:
        self.machine.fire(trigger, reason=reason, error_code=error_code)

    def _fire_step(self, step: Fire) -> None:
        self._fire(step.trigger, reason=step.reason, error_code=step.error_code)

    def _announce(self, record: TransitionRecord) -> None:
        log.info(
            "%s -> %s (%s): %s", record.from_state, record.to_state, record.trigger, record.reason
        )
        self._publish(
            ev.SupervisorTransition(
                from_state=record.from_state,
                to_state=record.to_state,
                trigger=record.trigger.value,
                reason=record.reason,
                error_code=record.error_code,
            )
        )

    def snapshot(self) -> SupervisorSnapshot:
        now = self._clock()
        return SupervisorSnapshot(
            state=self.state,
            since=self.machine.since,
            started_at=self.started_at,
            version=__version__,
            history=tuple(self.machine.history),
            children=tuple(r.describe(now) for r in self.children.values()),
            degraded_reasons=dict(self.degraded_reasons),
        )


async def _run_actor(actor: Actor, *, task_status: anyio.abc.TaskStatus[None]) -> None:
    await actor.run(task_status=task_status)
