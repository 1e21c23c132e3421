"""The supervisor's states and triggers: the vocabulary shared by the state machine, the event
bus and every interface that reports a state. The machine itself is
`supervisor.supervision.state_machine`."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["SERVING_STATES", "State", "Trigger"]


class State(StrEnum):
    STARTING = "starting"
    READY = "ready"
    FAILED = "failed"
    CATEGORIZING = "categorizing"
    RECOVERING = "recovering"
    DEGRADED = "degraded"
    HALTED = "halted"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Trigger(StrEnum):
    STARTED = "started"  # starting -> ready
    STARTED_DEGRADED = "started_degraded"  # starting -> degraded
    FAIL = "fail"  # a failure was captured
    CATEGORIZE = "categorize"  # failed -> categorizing
    PLAN = "plan"  # categorizing -> recovering: a recovery plan exists
    DISMISS = "dismiss"  # categorizing -> ready: the job's own fault, nothing to recover
    DISMISS_DEGRADED = "dismiss_degraded"  # same, while degraded reasons remain
    RECOVERED = "recovered"  # recovering -> ready
    RECOVERED_DEGRADED = "recovered_degraded"  # recovering -> degraded
    GIVE_UP = "give_up"  # infrastructure keeps failing (restart intensity) -> halted
    DEGRADE = "degrade"  # ready -> degraded (a reason appeared)
    RESTORE = "restore"  # degraded -> ready (every reason cleared)
    RESET = "reset"  # halted -> starting (operator)
    STOP = "stop"
    STOPPED = "stopped"


# Where the service takes and runs jobs (with every part working: see `Runtime.readiness`).
SERVING_STATES = frozenset({State.READY, State.DEGRADED})
