"""What the supervisor knows of each child between messages."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import anyio

from actors.actor import Actor
from supervisor.errors.report import ErrorReport
from supervisor.supervision.child_spec import ChildSpec
from supervisor.supervision.restart_window import restarts_in_window

__all__ = ["ChildRecord", "ChildState"]


class ChildState(StrEnum):
    STARTING = "starting"
    RUNNING = "running"
    EXITED = "exited"  # exited, restart not yet decided
    RESTARTING = "restarting"  # waiting out its backoff
    FAILED = "failed"  # intensity exceeded: down until an operator reset
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(slots=True)
class ChildRecord:
    spec: ChildSpec
    actor: Actor | None = None
    state: ChildState = ChildState.STOPPED
    generation: int = 0
    restart_history: tuple[float, ...] = ()
    last_error: ErrorReport | None = None
    scope: anyio.CancelScope | None = None
    # Created when the child starts (an anyio.Event needs a running event loop).
    done: anyio.Event | None = None

    def describe(self, now: float) -> dict[str, Any]:
        facts = self.actor.describe() if self.actor is not None else {}
        last = self.last_error
        return {
            "id": self.spec.id,
            "state": self.state.value,
            "restart": self.spec.restart.value,
            "restarts_in_window": len(
                restarts_in_window(self.restart_history, now, self.spec.period_s)
            ),
            "max_restarts": self.spec.max_restarts,
            "period_s": self.spec.period_s,
            "generation": self.generation,
            "last_error": (
                None
                if last is None
                else {"type": last.exc_type, "message": last.message, "ts": last.ts}
            ),
            **{f"actor_{k}" if k in ("state", "id") else k: v for k, v in facts.items()},
        }
