"""A job as the control plane keeps it: what was asked, what is being tried, what happened."""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from supervisor.core.params import GenerationParams, JobInputs, PipelineOptions
from supervisor.core.stages import Stage
from supervisor.jobs.change import Change, ChangeOrigin

__all__ = ["TERMINAL", "Job", "JobStatus", "new_job_id"]


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"  # failed an attempt; queued again with a change
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # the server died while it ran; queued again at start-up


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


def new_job_id() -> str:
    """Server-generated, URL- and file-name-safe (matches the worker's JOB_ID_PATTERN)."""
    return "j" + time.strftime("%Y%m%d%H%M%S") + secrets.token_hex(5)


@dataclass(slots=True)
class Job:
    id: str
    model: str
    params: GenerationParams
    options: PipelineOptions = field(default_factory=PipelineOptions)
    allow_output_changes: bool = True
    priority: int = 0
    status: JobStatus = JobStatus.QUEUED
    created_ts: float = field(default_factory=time.time)
    started_ts: float | None = None
    finished_ts: float | None = None
    attempts: int = 0
    crash_retries: int = 0
    # Recovery rungs tried for this job, in order (ids from the ladder).
    rungs_tried: list[str] = field(default_factory=list)
    # Every change the system applied, in words and as data, for the result and the sidecar.
    changes: list[Change] = field(default_factory=list)
    # A latents file kept after a decode failure: the next attempt re-runs the decode only.
    decode_only_from: str | None = None
    output_path: str | None = None
    # The parameters as asked, before any rung changed them (the learned-strategy key).
    requested: GenerationParams | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    stage: Stage | None = None
    step: int | None = None
    total_steps: int | None = None
    # The images it starts from (None: a text job).
    inputs: JobInputs | None = None

    @property
    def requested_params(self) -> GenerationParams:
        return self.requested or self.params

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def planned(self) -> list[Change]:
        """The changes planned for the attempt about to start (see `Change`'s invariant)."""
        return [c for c in self.changes if c.attempt == self.attempts + 1]

    def tried(self, origin: ChangeOrigin) -> list[Change]:
        return [c for c in self.changes if c.origin is origin]

    def to_row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "params": self.params.model_dump_json(),
            "options": self.options.model_dump_json(),
            "allow_output_changes": int(self.allow_output_changes),
            "priority": self.priority,
            "status": self.status.value,
            "created_ts": self.created_ts,
            "started_ts": self.started_ts,
            "finished_ts": self.finished_ts,
            "attempts": self.attempts,
            "crash_retries": self.crash_retries,
            "rungs_tried": json.dumps(self.rungs_tried),
            "changes": json.dumps([c.as_dict() for c in self.changes]),
            "decode_only_from": self.decode_only_from,
            "output_path": self.output_path,
            "requested": self.requested.model_dump_json() if self.requested else None,
            "result": json.dumps(self.result) if self.result is not None else None,
            "error": json.dumps(self.error) if self.error is not None else None,
            "inputs": self.inputs.model_dump_json() if self.inputs is not None else None,
        }

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Job:
        return cls(
            id=row["id"],
            model=row["model"],
            params=GenerationParams.model_validate_json(row["params"]),
            options=PipelineOptions.model_validate_json(row["options"]),
            allow_output_changes=bool(row["allow_output_changes"]),
            priority=row["priority"],
            status=JobStatus(row["status"]),
            created_ts=row["created_ts"],
            started_ts=row["started_ts"],
            finished_ts=row["finished_ts"],
            attempts=row["attempts"],
            crash_retries=row["crash_retries"],
            rungs_tried=json.loads(row["rungs_tried"]),
            changes=[Change.from_dict(c) for c in json.loads(row["changes"])],
            decode_only_from=row["decode_only_from"],
            output_path=row["output_path"],
            requested=(
                GenerationParams.model_validate_json(row["requested"]) if row["requested"] else None
            ),
            result=json.loads(row["result"]) if row["result"] else None,
            error=json.loads(row["error"]) if row["error"] else None,
            inputs=JobInputs.model_validate_json(row["inputs"]) if row.get("inputs") else None,
        )

    def public(self) -> dict[str, Any]:
        """The job as the API shows it."""
        return {
            "id": self.id,
            "status": self.status.value,
            "model": self.model,
            "params": self.params.model_dump(mode="json"),
            "requested_params": self.requested_params.model_dump(mode="json"),
            "options": self.options.model_dump(mode="json"),
            "allow_output_changes": self.allow_output_changes,
            "priority": self.priority,
            "created_ts": self.created_ts,
            "started_ts": self.started_ts,
            "finished_ts": self.finished_ts,
            "attempts": self.attempts,
            "changes": [c.as_dict() for c in self.changes],
            "progress": {"stage": self.stage, "step": self.step, "total_steps": self.total_steps},
            "inputs": self.inputs.model_dump(mode="json") if self.inputs is not None else None,
            "output_path": self.output_path,
            "result": self.result,
            "error": self.error,
        }
