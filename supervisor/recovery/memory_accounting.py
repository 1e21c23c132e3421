"""What the control process knows about memory: the budget a job may use, its estimated peak,
the calibration samples of finished jobs, and the numbers behind an out-of-memory at load.

It never measures anything itself (no torch here): it is told. The worker's address space at
ready comes with `Ready`, device samples from the VRAM monitor's events, each model's weights
from its safetensors headers once the loader resolved it, and each finished job's peak growth.
`MemoryRecovery` (pre-flight and the ladder) asks it through the callables it is built with.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import anyio.to_thread

from actors.worker.protocol import Ready
from supervisor.bus import events as ev
from supervisor.core.exceptions import GenvisorError
from supervisor.core.params import GenerationParams, PipelineOptions
from supervisor.core.store_health import tolerate
from supervisor.errors import ErrorReport, Stage
from supervisor.jobs import Job
from supervisor.recovery.calibration import CalibrationStore, PeakSample
from supervisor.recovery.preflight import (
    Estimate,
    estimate_peak,
    format_bytes,
    load_memory_profiles,
    load_peak,
)
from supervisor.recovery.weights_header import ModelWeights, summarize_weights

__all__ = ["MemoryAccounting"]

log = logging.getLogger("genvisor.memory")


class MemoryAccounting:
    def __init__(self, *, device: str, cap: int | None, calibration: CalibrationStore) -> None:
        self.device = device
        self.cap = cap
        self.calibration = calibration
        self.worker_ready: Ready | None = None
        self.last_sample: ev.VramSample | None = None
        self._sampled_at = self._worker_started = 0.0
        self._weights: dict[str, ModelWeights] = {}
        # The folder each model's weights were read from: read again only when it changes.
        self._weights_of: dict[str, Path] = {}
        self._profiles = load_memory_profiles()

    # -- what it is told ------------------------------------------------------------------------

    def worker_changed(self, ready: Ready) -> None:
        self.worker_ready = ready
        self._worker_started = time.monotonic()

    def sampled(self, sample: ev.VramSample) -> None:
        self.last_sample = sample
        self._sampled_at = time.monotonic()

    async def model_resolved(self, model: str, path: Path) -> None:
        """Read the model's safetensors headers, once per (model, folder), in a worker thread:
        a slow or network disk never holds the event loop (a header is small; the open and
        the seek are what can take long)."""
        if self._weights_of.get(model) == path:
            return
        try:
            self._weights[model] = await anyio.to_thread.run_sync(summarize_weights, path)
        except GenvisorError as exc:
            log.warning("no pre-flight for %s: %s", model, exc)
            return
        self._weights_of[model] = path

    # -- what it answers ------------------------------------------------------------------------

    def key(self) -> tuple[int | None, int]:
        """(cap, device total): the memory part of a learned strategy's key."""
        sample = self.last_sample
        return self.cap, sample.total if sample is not None else 0

    def budget(self, job: Job) -> int | None:
        """What the job's pipeline may use, weights included.

        Under a CPU cap: the cap less the worker's address space when it became ready. Not the
        live address space: a process keeps freed heap mapped and reuses it, so after one job
        `cap - VmSize` reads far lower than what the next job can really use (seen here: 239
        MiB "free" where the same job then ran). Otherwise the device's free memory plus what
        the worker already holds, from a sample of the current worker (None before one).
        """
        ready = self.worker_ready
        if self.cap is not None and self.device == "cpu":
            if ready is None or ready.baseline_address_space_bytes is None:
                return None
            return self.cap - ready.baseline_address_space_bytes
        sample = self.last_sample
        if sample is None or ready is None or self._sampled_at <= self._worker_started:
            return None
        budget = sample.free + (sample.process_used or 0)
        return min(budget, self.cap) if self.cap is not None else budget

    def estimate(
        self, job: Job, options: PipelineOptions, params: GenerationParams
    ) -> Estimate | None:
        return self._estimate_with(job, options, params, calibrated=True)

    def _estimate_with(
        self, job: Job, options: PipelineOptions, params: GenerationParams, *, calibrated: bool
    ) -> Estimate | None:
        weights = self._weights.get(job.model)
        profile = self._profiles.get(job.model.lower())
        if weights is None or profile is None:
            return None
        if calibrated:
            base = profile
            profile = tolerate(
                lambda: self.calibration.calibrated(base, job.model, self.device),
                base,
                what="calibrated estimate",
            )
        # An image job encodes its condition (a stage of its own) and holds it in denoise.
        image = job.inputs is not None and job.inputs.image is not None
        return estimate_peak(profile, weights, options, params, image=image)

    def calibrate(
        self, job: Job, options: PipelineOptions, params: GenerationParams, growth: int
    ) -> None:
        """Record one measured peak against the seed (unscaled) estimate of the same run."""
        seed = self._estimate_with(job, options, params, calibrated=False)
        if seed is None:
            return
        # The growth is what the job added on top of a loaded pipeline: weights and overhead
        # were already resident, so they are added back to compare like with like.
        measured = growth + seed.weights + seed.overhead
        self.calibration.record(job.model, self.device, PeakSample.from_estimate(seed, measured))

    def load_facts(self, report: ErrorReport, options: PipelineOptions) -> dict[str, object]:
        """The numbers behind an out-of-memory while loading on a CPU under a cap, for the
        message: what loading needs (preflight.load_peak) and what the cap leaves above the
        worker's own address space. Empty for other failures or when any of them is unknown."""
        model = report.context.get("model")
        ready = self.worker_ready
        baseline = ready.baseline_address_space_bytes if ready is not None else None
        if report.stage is not Stage.LOAD or not isinstance(model, str):
            return {}
        weights = self._weights.get(model)
        if weights is None or self.cap is None or baseline is None or options.device != "cpu":
            return {}
        return {
            "load_required": format_bytes(load_peak(weights, options)),
            "available": format_bytes(max(0, self.cap - baseline)),
            "memory_limit": format_bytes(self.cap),
        }
