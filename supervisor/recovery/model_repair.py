"""Recovery for a model that failed to load because its files are damaged: repair, load again.

The repair itself (quarantine, re-download or rebuild) is the model loader's; the generator asks
for it before loading when a change planned for the attempt says so. One repair per job: a model
that is still broken after a repair is explained, not retried forever.
"""

from __future__ import annotations

from actors.worker.protocol import Failed
from supervisor.errors import ErrorCode, Stage
from supervisor.jobs import REPAIR_MODEL, Change, ChangeOrigin, Job
from supervisor.recovery.diagnosis import Diagnosis
from supervisor.recovery.planner import RecoveryStep

__all__ = ["fresh_worker_pending", "plan_model_repair", "repair_pending"]

DAMAGED = frozenset(
    {
        ErrorCode.MODEL_CORRUPTED.value,
        ErrorCode.MODEL_INCOMPLETE.value,
        ErrorCode.MODEL_WEIGHTS_MISMATCH.value,
    }
)


def plan_model_repair(job: Job, diagnosis: Diagnosis, failed: Failed) -> RecoveryStep | None:
    if diagnosis.code not in DAMAGED or failed.report.stage is not Stage.LOAD:
        return None
    if any(c.rung == REPAIR_MODEL for c in job.changes):
        return None  # repaired once already: explain instead of looping
    change = Change(
        rung=REPAIR_MODEL,
        text=(
            f"repaired the files of {job.model} and loaded it again because loading failed "
            f"({diagnosis.code})"
        ),
        origin=ChangeOrigin.RECOVERY,
        attempt=job.attempts + 1,
        action="redownload_model",
    )
    return RecoveryStep(description=change.text, change=change)


def repair_pending(job: Job) -> bool:
    """Whether the attempt about to start must repair the model first."""
    return any(c.rung == REPAIR_MODEL for c in job.planned)


def fresh_worker_pending(job: Job) -> bool:
    """Whether the attempt about to start must run in a new worker process."""
    return any(c.fresh_worker for c in job.planned)
