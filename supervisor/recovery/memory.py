"""Out-of-memory that heals itself: the VRAM ladder around the supervisor's decisions.

At dispatch, a job starts at the rung learned for similar requests, then pre-flight checks the
estimate against the memory budget (when one is known) and either raises the starting rung or
refuses the job with the numbers. On a real `VRAM.EXHAUSTED` the pure `MemoryPlanner`
(supervisor/recovery/planner.py) gives the next rung. The rung that finally worked is remembered
for the next similar request; each success is a calibration sample for pre-flight.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from actors.worker.protocol import Failed
from supervisor.core.params import GenerationParams, PipelineOptions
from supervisor.core.store_health import tolerate
from supervisor.jobs import ChangeOrigin, Job
from supervisor.recovery.diagnosis import Diagnosis
from supervisor.recovery.ladder import AppliedChange, Ladder, RungId, apply_up_to, device_kind
from supervisor.recovery.learned_strategies import LearnedStrategies, StrategyKey
from supervisor.recovery.planner import MemoryPlanner, RecoveryStep, change_record
from supervisor.recovery.preflight import Estimate, Plan, PreflightJob, Refusal, choose_rung

__all__ = ["MemoryRecovery", "PreflightRefused"]

log = logging.getLogger("genvisor.memory")


@dataclass(frozen=True, slots=True)
class PreflightRefused:
    """Nothing on the ladder is predicted to fit: the job fails before it runs."""

    message: str
    refusal: Refusal


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
        self.planner = MemoryPlanner(ladder, device=device, max_attempts=max_attempts)
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

    def _learned(self, job: Job) -> RungId | None:
        key = self.key(job)
        learned = tolerate(lambda: self.strategies.lookup(key), None, what="learned strategy")
        return learned.rung if learned is not None else None

    def _preflight(self, job: Job, start_at: RungId | None) -> Plan | Refusal | None:
        """Pre-flight's verdict for the job here (None: no budget or no estimate known)."""
        budget = self._budget(job)
        estimate_fn = _bound(self._estimate, job)
        if budget is None or estimate_fn is None:
            return None
        return choose_rung(
            estimate_fn,
            budget,
            self.reserve,
            self.ladder,
            PreflightJob(job.options, job.params, job.allow_output_changes, start_at),
        )

    def preview(self, job: Job) -> Plan | Refusal | None:
        """What `prepare` would decide on this device, changing nothing (placement compares
        devices with it)."""
        return self._preflight(job, self._learned(job))

    def prepare(self, job: Job) -> PreflightRefused | None:
        """Learned rung, then pre-flight. Mutates the job's options and params; records why."""
        start_at = self._learned(job)
        outcome = self._preflight(job, start_at)
        if outcome is not None:
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
        """The next rung (pure: see `MemoryPlanner`; the decider calls the planner itself)."""
        return self.planner.plan(job, diagnosis, failed)

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

    def remember(self, job: Job, rung: RungId) -> None:
        """The rung a recovered job finally ran at: similar requests start there next time."""
        key = self.key(job)
        tolerate(lambda: self.strategies.remember(key, rung), None, what="learning a rung")
        log.info("learned: %s starts at %s next time", job.model, rung.value)


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
