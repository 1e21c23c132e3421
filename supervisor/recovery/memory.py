"""Out-of-memory that heals itself: the VRAM ladder as the supervisor's recovery planner.

At dispatch, a job starts at the rung learned for similar requests, then pre-flight checks the
estimate against the memory budget (when one is known) and either raises the starting rung or
refuses the job with the numbers. On a real `VRAM.EXHAUSTED`, `plan` returns the next rung;
after a decode failure the kept latents are decoded again instead of denoising twice. The rung
that finally worked is remembered for the next similar request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from actors.worker.protocol import Failed
from supervisor.core.params import GenerationParams, PipelineOptions
from supervisor.core.store_health import tolerate
from supervisor.errors import ErrorCode, Stage
from supervisor.jobs import Change, ChangeOrigin, Job
from supervisor.recovery.diagnosis import Diagnosis
from supervisor.recovery.ladder import (
    AppliedChange,
    DeviceKind,
    Ladder,
    RungId,
    apply_rung,
    apply_up_to,
    device_kind,
    oom_cause,
    rung_for_failure,
)
from supervisor.recovery.learned_strategies import LearnedStrategies, StrategyKey
from supervisor.recovery.planner import RecoveryStep
from supervisor.recovery.preflight import Estimate, Plan, PreflightJob, Refusal, choose_rung

__all__ = ["MEMORY_CODES", "RUNG_ACTIONS", "MemoryRecovery", "PreflightRefused"]

log = logging.getLogger("genvisor.memory")

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
class PreflightRefused:
    """Nothing on the ladder is predicted to fit: the job fails before it runs."""

    message: str
    refusal: Refusal


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


class MemoryRecovery:
    def __init__(
        self,
        ladder: Ladder,
        strategies: LearnedStrategies,
        *,
        device: str,
        device_name: str,
        max_attempts: int,
        memory_key: Callable[[], tuple[int | None, int]],
        budget: Callable[[Job], int | None],
        estimate: Callable[[Job, PipelineOptions, GenerationParams], Estimate | None],
        reserve: int,
        calibrate: Callable[[Job, PipelineOptions, GenerationParams, int], None] | None = None,
    ) -> None:
        self.ladder = ladder
        self.strategies = strategies
        self.device = device
        self.device_name = device_name
        self.max_attempts = max_attempts
        self._memory_key = memory_key
        self._budget = budget
        self._estimate = estimate
        self.reserve = reserve
        self._calibrate = calibrate

    def key(self, job: Job) -> StrategyKey:
        cap, total = self._memory_key()
        p = job.requested_params
        return StrategyKey.for_job(
            model=job.model,
            device=f"{device_kind(self.device).value}:{self.device_name}",
            cap=cap,
            total=total,
            width=p.width,
            height=p.height,
            frames=p.num_frames,
        )

    # -- before the first attempt ---------------------------------------------------------------

    def prepare(self, job: Job) -> PreflightRefused | None:
        """Learned rung, then pre-flight. Mutates the job's options and params; records why."""
        key = self.key(job)
        learned = tolerate(lambda: self.strategies.lookup(key), None, what="learned strategy")
        start_at = learned.rung if learned is not None else None
        budget = self._budget(job)
        estimate_fn = _bound(self._estimate, job)
        if budget is not None and estimate_fn is not None:
            outcome = choose_rung(
                estimate_fn,
                budget,
                self.reserve,
                self.ladder,
                PreflightJob(job.options, job.params, job.allow_output_changes, start_at),
            )
            if isinstance(outcome, Refusal):
                return PreflightRefused(outcome.message, outcome)
            self._adopt(job, outcome, learned_rung=start_at)
            return None
        if start_at is not None:
            options, params, changes = apply_up_to(
                self.ladder,
                start_at,
                job.options,
                job.params,
                allow_output_changes=job.allow_output_changes,
                cause="the same request ran out of memory here before",
            )
            self._record(job, options, params, changes, origin=ChangeOrigin.LEARNED)
        return None

    def _adopt(self, job: Job, plan: Plan, *, learned_rung: RungId | None) -> None:
        origin = ChangeOrigin.LEARNED if learned_rung is not None else ChangeOrigin.PREFLIGHT
        self._record(job, plan.options, plan.params, plan.changes, origin=origin)

    def _record(
        self,
        job: Job,
        options: PipelineOptions,
        params: GenerationParams,
        changes: list[AppliedChange],
        *,
        origin: ChangeOrigin,
    ) -> None:
        job.options, job.params = options, params
        for change in changes:
            job.rungs_tried.append(change.rung.value)
            job.changes.append(change_record(change, attempt=1, origin=origin))

    # -- after an out-of-memory failure ---------------------------------------------------------

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

        def apply(target: Job) -> None:
            target.options, target.params = options, params
            target.rungs_tried.append(rung.id.value)
            target.decode_only_from = failed.latents_path if keep_latents else None

        what = "decode the kept latents again" if keep_latents else "run the job again"
        return RecoveryStep(
            description=f"{change.text}; {what} (rung {rung.id.value})",
            apply=apply,
            change=record,
        )

    def _give_up(self, job: Job, diagnosis: Diagnosis, why: str) -> RecoveryStep:
        tried = ", ".join(job.rungs_tried) or "none"
        return RecoveryStep(
            description=f"job {job.id} can not fit: {why} (rungs tried: {tried})",
            give_up=True,
            final_error=diagnosis,
        )

    # -- after success --------------------------------------------------------------------------

    def measured(
        self, job: Job, options: PipelineOptions, params: GenerationParams, growth: int | None
    ) -> None:
        """A job's own peak memory growth: a calibration sample for pre-flight."""
        if growth is not None and growth > 0 and self._calibrate is not None:
            calibrate = self._calibrate
            tolerate(
                lambda: calibrate(job, options, params, growth), None, what="calibration sample"
            )

    def succeeded(self, job: Job) -> None:
        recovered = job.tried(ChangeOrigin.RECOVERY)
        if recovered and job.rungs_tried:
            rung = RungId(job.rungs_tried[-1])
            key = self.key(job)
            tolerate(lambda: self.strategies.remember(key, rung), None, what="learning a rung")
            log.info("learned: %s starts at %s next time", job.model, rung.value)


def _nothing_left(job: Job, stage: Stage, device: str) -> str:
    cause = oom_cause(stage, device)
    if stage is Stage.LOAD and device_kind(device) is DeviceKind.CPU:
        return f"{cause}, and on a CPU no rung lowers what loading the weights needs"
    if job.rungs_tried:
        return f"{cause} even at the last rung that could help ({job.rungs_tried[-1]})"
    return f"{cause} and no rung of the ladder lowers that stage's memory"


def _bound(
    estimate: Callable[[Job, PipelineOptions, GenerationParams], Estimate | None], job: Job
) -> Callable[[PipelineOptions, GenerationParams], Estimate] | None:
    if estimate(job, job.options, job.params) is None:
        return None

    def fn(options: PipelineOptions, params: GenerationParams) -> Estimate:
        result = estimate(job, options, params)
        assert result is not None
        return result

    return fn
