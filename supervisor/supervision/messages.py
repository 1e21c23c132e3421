"""The messages the supervisor's loop handles, and the snapshot it gives of itself."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from supervisor.core.exceptions import GenvisorError
from supervisor.errors.report import ErrorReport
from supervisor.supervision.restart_window import ExitKind
from supervisor.supervision.state_machine import State, TransitionRecord

__all__ = [
    "CancelRequest",
    "ChildExited",
    "ChildStarted",
    "ClearDegraded",
    "Degrade",
    "JobSubmitted",
    "Reset",
    "ResetRefused",
    "RestartDue",
    "SupervisorSnapshot",
]


# -- messages -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChildStarted:
    child_id: str
    generation: int


@dataclass(frozen=True, slots=True)
class ChildExited:
    child_id: str
    generation: int
    kind: ExitKind
    report: ErrorReport | None


@dataclass(frozen=True, slots=True)
class RestartDue:
    child_id: str
    generation: int


@dataclass(frozen=True, slots=True)
class Reset:
    reason: str = "operator reset"
    # One device of a `devices` list whose worker halted (None: the whole halted supervisor).
    device: str | None = None


class ResetRefused(GenvisorError):
    """A device reset that can not be done: no such device, or it is in service."""


@dataclass(frozen=True, slots=True)
class JobSubmitted:
    job_id: str


@dataclass(frozen=True, slots=True)
class CancelRequest:
    job_id: str


@dataclass(frozen=True, slots=True)
class Degrade:
    key: str
    reason: str


@dataclass(frozen=True, slots=True)
class ClearDegraded:
    key: str


@dataclass(frozen=True, slots=True)
class SupervisorSnapshot:
    state: State
    since: float
    started_at: float
    version: str
    history: tuple[TransitionRecord, ...]
    children: tuple[dict[str, Any], ...]
    degraded_reasons: dict[str, str] = field(default_factory=dict)

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        return {
            "state": self.state.value,
            "since": self.since,
            "uptime_s": round(now - self.started_at, 3),
            "version": self.version,
            "degraded_reasons": dict(self.degraded_reasons),
            "history": [r.as_dict() for r in self.history],
            "children": list(self.children),
        }
