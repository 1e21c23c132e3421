"""Jobs: the record, the durable store."""

from supervisor.jobs.job import TERMINAL, Job, JobStatus, new_job_id
from supervisor.jobs.job_store import JobStore

__all__ = ["TERMINAL", "Job", "JobStatus", "JobStore", "new_job_id"]
