"""Recovery planning for a failed job: which step, if any, is tried next.

A planner is a pure function of the job (what it already tried), the diagnosis and the failure.
It returns None when a retry cannot help (the job's own fault: bad input, a missing model the
user must fetch), a step to apply and re-run, or a give-up with the final explanation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from actors.worker.protocol import Failed
    from supervisor.jobs import Change, Job
    from supervisor.recovery.diagnosis import Diagnosis

__all__ = ["RecoveryPlanner", "RecoveryStep", "no_recovery"]


@dataclass(frozen=True, slots=True)
class RecoveryStep:
    description: str
    # Applied to the job before it is queued again (options, params, decode_only_from).
    apply: Callable[[Job], None] = field(default=lambda job: None)
    # Recorded in the job's changes and its job.retrying event.
    change: Change | None = None
    give_up: bool = False
    final_error: Diagnosis | None = None


RecoveryPlanner = Callable[["Job", "Diagnosis", "Failed"], RecoveryStep | None]


def no_recovery(job: Job, diagnosis: Diagnosis, failed: Failed) -> RecoveryStep | None:
    """The planner until a ladder is configured: nothing is retried automatically."""
    return None
