"""What the job decider returns: plain, frozen values the supervisor carries out.

A decision says everything that follows from one event (a job's outcome, a worker's crash, a
cancel, a refused pre-flight, a model that cannot be made available) and does nothing itself:
the job as it is to be written to the store, the transitions to fire and the events to publish
(in the one order they happen), the degraded reasons that appear or clear, the job whose re-run
decides a recovery, and what the success teaches. Invariant: the supervisor writes the job
first, then fires and publishes `steps` in order, so an event never announces a job the store
does not hold yet.

`Walk` is a decision being built: the decider fires nothing itself; `Walk` follows the
transition table (the one the supervisor's machine is built from) so that each next trigger is
chosen from the state the previous ones lead to, exactly as the supervisor will see it when it
carries the steps out. Invariant: a walk never holds a transition the machine would refuse.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from actors.generator import RunJob
from supervisor.bus import events as ev
from supervisor.core.exceptions import InvalidTransition
from supervisor.core.params import GenerationParams, PipelineOptions
from supervisor.core.states import State, Trigger
from supervisor.jobs import Change, Job, JobStatus
from supervisor.recovery.ladder import RungId
from supervisor.supervision.state_machine import TRANSITIONS

__all__ = [
    "Attempt",
    "CancelDecision",
    "CancelKind",
    "Facts",
    "Fire",
    "JobDecision",
    "Learning",
    "ModelStep",
    "NextAttempt",
    "Step",
    "Walk",
]


@dataclass(frozen=True, slots=True)
class Facts:
    """The supervisor's side of a decision, read at the moment of the event."""

    state: State
    now: float  # wall-clock seconds (the job's timestamps)
    degraded: Mapping[str, str] = field(default_factory=dict)
    # The job whose re-run decides whether a recovery worked (None: not recovering a job).
    recovering_job_id: str | None = None


@dataclass(frozen=True, slots=True)
class Fire:
    """A transition of the supervisor's state machine."""

    trigger: Trigger
    reason: str
    error_code: str | None = None


# One announcement, in order: a transition to fire or an event to publish.
Step = Fire | ev.EventData


@dataclass(frozen=True, slots=True)
class NextAttempt:
    """A job queued again: its next attempt's number, why, and what changes for it."""

    number: int
    reason: str
    error_code: str
    # The typed changes planned for this attempt (none for a re-run after a worker crash).
    changes: tuple[Change, ...]
    # The kept latents the attempt decodes again (None: a full run).
    decode_only_from: str | None = None
    # A crash retry (counted against `job_crash_retries`), not a recovery step.
    after_crash: bool = False


@dataclass(frozen=True, slots=True)
class Learning:
    """What a success teaches the next jobs: the rung to start at, a calibration sample."""

    rung: RungId | None
    options: PipelineOptions
    params: GenerationParams
    peak_growth_bytes: int | None


@dataclass(frozen=True, slots=True)
class JobDecision:
    status: JobStatus  # what the job becomes
    job: Job  # the job as the store is to hold it (a copy: the decider mutates nothing)
    reason: str  # why, in words (the fail/dismiss reason, the retry's description)
    steps: tuple[Step, ...] = ()
    next_attempt: NextAttempt | None = None
    degrade: Mapping[str, str] = field(default_factory=dict)  # reasons that appear
    restore: tuple[str, ...] = ()  # reasons that clear
    recovering_job_id: str | None = None  # after the decision
    learn: Learning | None = None

    @property
    def triggers(self) -> tuple[Trigger, ...]:
        return tuple(s.trigger for s in self.steps if isinstance(s, Fire))

    @property
    def events(self) -> tuple[ev.EventData, ...]:
        return tuple(s for s in self.steps if not isinstance(s, Fire))


class CancelKind(StrEnum):
    UNKNOWN = "unknown"  # no such job
    REFUSED = "refused"  # already finished: nothing to cancel
    RUNNING = "running"  # the generator is asked to cancel it; its outcome (cancelled) follows
    NOW = "now"  # waiting: cancelled at once


@dataclass(frozen=True, slots=True)
class CancelDecision:
    kind: CancelKind
    job: Job | None = None
    decision: JobDecision | None = None  # for NOW


@dataclass(frozen=True, slots=True)
class Attempt:
    """A job's next attempt as dispatch starts it."""

    job: Job  # running, its attempt counted (saved before it is announced)
    run: RunJob  # told to the generator
    started: ev.JobStarted


class ModelStep(StrEnum):
    """What to do when a job's model cannot be made available before it loads."""

    REPAIR = "repair"  # quarantine and re-download (or rebuild) its files, then resolve again
    FALLBACK = "fallback"  # the registry's fallback model stands in
    FAIL = "fail"  # the job fails at load, with the loader's reason


# -- a decision being built ---------------------------------------------------------------------

_EDGES: dict[Trigger, tuple[frozenset[State], State]] = {
    trigger: (frozenset(sources), destination) for trigger, sources, destination in TRANSITIONS
}


class Walk:
    """A decision being built from `facts` (see the module's docstring)."""

    def __init__(self, facts: Facts) -> None:
        self._facts = facts
        self.now = facts.now
        self.state = facts.state
        self.degraded = dict(facts.degraded)
        self.recovering = facts.recovering_job_id
        self._steps: list[Step] = []

    def fire(self, trigger: Trigger, reason: str, error_code: str | None = None) -> None:
        sources, destination = _EDGES[trigger]
        if self.state not in sources:
            raise InvalidTransition(state=self.state.value, trigger=trigger.value)
        self._steps.append(Fire(trigger, reason, error_code))
        self.state = destination

    def publish(self, event: ev.EventData) -> None:
        self._steps.append(event)

    def settled(self, whole: Trigger, degraded: Trigger) -> Trigger:
        """The trigger that leaves the service whole, or degraded while reasons remain."""
        return degraded if self.degraded else whole

    def decide(
        self,
        job: Job,
        status: JobStatus,
        reason: str,
        *,
        next_attempt: NextAttempt | None = None,
        learn: Learning | None = None,
    ) -> JobDecision:
        before = self._facts.degraded
        return JobDecision(
            status=status,
            job=job,
            reason=reason,
            steps=tuple(self._steps),
            next_attempt=next_attempt,
            degrade={k: v for k, v in self.degraded.items() if before.get(k) != v},
            restore=tuple(k for k in before if k not in self.degraded),
            recovering_job_id=self.recovering,
            learn=learn,
        )
