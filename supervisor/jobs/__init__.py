"""Jobs: the record, the durable store."""

from supervisor.jobs.change import FALLBACK_MODEL, REPAIR_MODEL, Change, ChangeOrigin
from supervisor.jobs.job import TERMINAL, Job, JobStatus, new_job_id
from supervisor.jobs.job_store import AsyncJobStore, JobStore

__all__ = [
    "AsyncJobStore",
    "FALLBACK_MODEL",
    "REPAIR_MODEL",
    "TERMINAL",
    "Change",
    "ChangeOrigin",
    "Job",
    "JobStatus",
    "JobStore",
    "new_job_id",
]
