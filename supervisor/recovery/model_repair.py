"""Recovery for a model that failed to load because its files are damaged: repair, load again.

The repair itself (quarantine, re-download or rebuild) is the model loader's; the generator asks
for it before loading when the job's last change says so. One repair per job: a model that is
still broken after a repair is explained, not retried forever.
"""

from __future__ import annotations

from actors.worker.protocol import Failed
from supervisor.errors import ErrorCode, Stage
from supervisor.jobs import Job
from supervisor.recovery.diagnosis import Diagnosis
from supervisor.recovery.planner import RecoveryStep

__all__ = ["REPAIR_RUNG", "fresh_worker_pending", "plan_model_repair", "repair_pending"]

REPAIR_RUNG = "repair_model"
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
    if any(c.get("rung") == REPAIR_RUNG for c in job.changes):
        return None  # repaired once already: explain instead of looping
    change = {
        "rung": REPAIR_RUNG,
        "text": f"repaired the files of {job.model} and loaded it again",
        "description": (
            f"repaired the files of {job.model} and loaded it again because loading failed "
            f"({diagnosis.code})"
        ),
        "changes_output": False,
        "origin": "recovery",
        "action": "redownload_model",
        "attempt": job.attempts + 1,
        "before": {},
        "after": {},
    }
    return RecoveryStep(description=str(change["description"]), change=change)


def _pending(job: Job) -> dict[str, object] | None:
    """The change planned for the attempt about to start, if the last change is one."""
    last = job.changes[-1] if job.changes else None
    return last if last is not None and last.get("attempt") == job.attempts + 1 else None


def repair_pending(job: Job) -> bool:
    """Whether the attempt about to start must repair the model first."""
    last = _pending(job)
    return last is not None and last.get("rung") == REPAIR_RUNG


def fresh_worker_pending(job: Job) -> bool:
    """Whether the attempt about to start must run in a new worker process."""
    last = _pending(job)
    return last is not None and bool(last.get("fresh_worker"))
