"""Recovery planning for a failed job: which step, if any, is tried next.

Planning is pure: a function of the job (what it already tried), the diagnosis and the failure,
with no I/O. It returns None when a retry cannot help (the job's own fault: bad input, a missing
model the user must fetch), a step to apply and re-run, or a give-up with the final explanation.
A step is data (the options, parameters and latents of the next attempt, and its `Change`), never
a closure: the supervision layer's decider turns it into the next attempt.

`MemoryPlanner` is the VRAM ladder after a real out-of-memory: the next rung that lowers the
memory of the stage that failed; after a decode failure the kept latents are decoded again
instead of denoising twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from actors.worker.protocol import Failed
from supervisor.core.params import GenerationParams, PipelineOptions
from supervisor.errors import ErrorCode, Stage
from supervisor.jobs import Change, ChangeOrigin, Job
from supervisor.recovery.diagnosis import Diagnosis
from supervisor.recovery.ladder import (
    AppliedChange,
    DeviceKind,
    Ladder,
    RungId,
    apply_rung,
    device_kind,
    oom_cause,
    rung_for_failure,
)

__all__ = [
    "MEMORY_CODES",
    "RUNG_ACTIONS",
    "MemoryPlanner",
    "RecoveryStep",
    "change_record",
]

MEMORY_CODES = frozenset({ErrorCode.VRAM_EXHAUSTED.value, ErrorCode.VRAM_FRAGMENTED.value})

# The catalog's suggestion id of each rung: once applied it is reported as done, not suggested.
RUNG_ACTIONS: dict[RungId, str] = {
    RungId.FREE_CACHES: "free_gpu_memory",
    RungId.VAE_TILING: "enable_vae_tiling",
    RungId.MODEL_OFFLOAD: "enable_cpu_offload",
    RungId.GROUP_OFFLOAD: "enable_cpu_offload",
    RungId.SEQUENTIAL_OFFLOAD: "enable_cpu_offload",
    RungId.FEWER_FRAMES: "fewer_frames",
    RungId.LOWER_RESOLUTION: "lower_resolution",
}


@dataclass(frozen=True, slots=True)
class RecoveryStep:
    """One planned step: what the next attempt runs with, or a give-up with the final error."""

    description: str
    # Recorded in the job's changes and its job.retrying event.
    change: Change | None = None
    # The next attempt's options and parameters (None: as they were).
    options: PipelineOptions | None = None
    params: GenerationParams | None = None
    # The ladder rung this step climbs to (recorded in `Job.rungs_tried`).
    rung: RungId | None = None
    # With a rung: the kept latents the next attempt decodes again (None: a full run). A step
    # without a rung (a model repair) leaves the job's latents as they were.
    decode_only_from: str | None = None
    give_up: bool = False
    final_error: Diagnosis | None = None

    def apply(self, job: Job) -> None:
        """Give `job` what its next attempt runs with (the change itself is recorded apart)."""
        if self.options is not None:
            job.options = self.options
        if self.params is not None:
            job.params = self.params
        if self.rung is not None:
            job.rungs_tried.append(self.rung.value)
            job.decode_only_from = self.decode_only_from


def change_record(
    change: AppliedChange,
    *,
    attempt: int,
    origin: ChangeOrigin,
    decode_only: bool = False,
    fresh_worker: bool = False,
) -> Change:
    return Change(
        rung=change.rung.value,
        text=change.text,
        origin=origin,
        attempt=attempt,
        action=RUNG_ACTIONS.get(change.rung),
        changes_output=change.changes_output,
        decode_only=decode_only,
        fresh_worker=fresh_worker,
        before=dict(change.before),
        after=dict(change.after),
    )


class MemoryPlanner:
    """The ladder after an out-of-memory: pure, bounded by `max_attempts` recoveries a job."""

    def __init__(self, ladder: Ladder, *, device: str, max_attempts: int) -> None:
        self.ladder = ladder
        self.device = device
        self.max_attempts = max_attempts

    def plan(self, job: Job, diagnosis: Diagnosis, failed: Failed) -> RecoveryStep | None:
        if diagnosis.code not in MEMORY_CODES:
            return None
        recoveries = len(job.tried(ChangeOrigin.RECOVERY))
        if recoveries >= self.max_attempts:
            return self._give_up(job, diagnosis, f"{recoveries} recovery attempts used")
        stage = failed.report.stage
        rung = rung_for_failure(
            self.ladder,
            {RungId(r) for r in job.rungs_tried},
            stage,
            device_kind(self.device),
            job.allow_output_changes,
            options=job.options,
            params=job.params,
        )
        if rung is None:
            return self._give_up(job, diagnosis, _nothing_left(job, stage, self.device))
        options, params, change = apply_rung(
            job.options, job.params, rung, cause=oom_cause(stage, self.device)
        )
        # Invariant: latents are reused only when the rung leaves the generation itself as it
        # was (same size, frames, steps): then only the decode needs to run again.
        keep_latents = (
            stage is Stage.DECODE and failed.latents_path is not None and params == job.params
        )
        # Invariant: on a CPU under an address-space cap, a process that hit the cap keeps
        # ~250-300 MiB more mapped afterwards (measured), so the retry runs in a fresh worker.
        record = change_record(
            change,
            attempt=job.attempts + 1,
            origin=ChangeOrigin.RECOVERY,
            decode_only=keep_latents,
            fresh_worker=device_kind(self.device) is DeviceKind.CPU,
        )
        what = "decode the kept latents again" if keep_latents else "run the job again"
        return RecoveryStep(
            description=f"{change.text}; {what} (rung {rung.id.value})",
            change=record,
            options=options,
            params=params,
            rung=rung.id,
            decode_only_from=failed.latents_path if keep_latents else None,
        )

    def _give_up(self, job: Job, diagnosis: Diagnosis, why: str) -> RecoveryStep:
        tried = ", ".join(job.rungs_tried) or "none"
        return RecoveryStep(
            description=f"job {job.id} can not fit: {why} (rungs tried: {tried})",
            give_up=True,
            final_error=diagnosis,
        )


def _nothing_left(job: Job, stage: Stage, device: str) -> str:
    cause = oom_cause(stage, device)
    if stage is Stage.LOAD and device_kind(device) is DeviceKind.CPU:
        return f"{cause}, and on a CPU no rung lowers what loading the weights needs"
    if job.rungs_tried:
        return f"{cause} even at the last rung that could help ({job.rungs_tried[-1]})"
    return f"{cause} and no rung of the ladder lowers that stage's memory"
