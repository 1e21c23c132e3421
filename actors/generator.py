"""Generator actor: owns the worker process, the job being run, cancellation and heartbeats.

The worker is a separate process (it imports torch; this actor never does). Three background
tasks watch it: a reader that turns channel frames into events and outcomes, a process watcher
that notices death within moments (it awaits the process itself, no polling), and a watchdog
that kills a worker whose heartbeats stopped. Death and hangs crash this actor with
`WorkerCrashed` / `WorkerHung`: the supervisor's failure pipeline and restart intensity decide
what follows, and a fresh actor starts a fresh worker.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from actors.actor import Actor
from actors.worker.channel import ChannelClosed
from actors.worker.protocol import (
    Cancel,
    Cancelled,
    Done,
    Failed,
    Fit,
    Generate,
    GenerationParams,
    Heartbeat,
    Load,
    Loaded,
    Mode,
    PipelineClass,
    PipelineOptions,
    Progress,
    Ready,
    StageTiming,
)
from actors.worker.spawn import SpawnWorker, WorkerLaunch, WorkerLink, spawn_worker
from supervisor.bus import events as ev
from supervisor.core.exceptions import WorkerCrashed, WorkerHung
from supervisor.core.params import mode_of
from supervisor.core.structured_logging import current_job_id
from supervisor.errors.report import ErrorReport, Stage

__all__ = ["CancelJob", "Generator", "JobOutcome", "ModelChoice", "RunJob"]

log = logging.getLogger("genvisor.generator")


@dataclass(frozen=True, slots=True)
class RunJob:
    job_id: str
    model: str
    params: GenerationParams
    options: PipelineOptions
    output_dir: Path
    attempt: int = 1
    decode_only_from: str | None = None
    applied_changes: tuple[str, ...] = ()
    # Where the weights are; None: ask the model loader (once per model, not per job).
    model_path: Path | None = None
    # A load of this model failed as corrupted: repair it (through the loader) before loading.
    repair_model: bool = False
    # Run in a new worker process (after a memory failure left the old one's memory dirty).
    fresh_worker: bool = False
    # Stored inputs (paths under the home's inputs folder) and how they meet the size.
    image_path: str | None = None
    last_image_path: str | None = None
    fit: Fit = Fit.CROP

    @property
    def mode(self) -> Mode:
        return mode_of(self.image_path, self.last_image_path)


@dataclass(frozen=True, slots=True)
class ModelChoice:
    """What the model loader made available for a requested model."""

    name: str
    path: Path
    # Set when the registry's fallback model runs instead of the one asked for, in words.
    fallback: str | None = None
    # Set when the model's files were repaired before this load, in words.
    repaired: str | None = None
    # The registry entry's pipeline class (the worker instantiates no other).
    pipeline_class: PipelineClass = PipelineClass.WAN


@dataclass(frozen=True, slots=True)
class CancelJob:
    job_id: str


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """Sent to the supervisor when a job ends on the worker: exactly one of the three."""

    job_id: str
    done: Done | None = None
    failed: Failed | None = None
    cancelled: Cancelled | None = None
    # The model that actually ran, and what was done to make it available.
    model: ModelChoice | None = None


class Generator(Actor):
    def __init__(
        self,
        *,
        launch: WorkerLaunch,
        publish: Callable[[ev.EventData], object],
        report: Callable[[JobOutcome], None],
        resolve_model: Callable[[str, bool, Mode], Awaitable[ModelChoice]] | None = None,
        stall_timeout: float = 30.0,
        cancel_grace: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        on_worker: Callable[[Ready], None] | None = None,
        on_resolved: Callable[[str, Path], Awaitable[None]] | None = None,
        spawn: SpawnWorker = spawn_worker,
    ) -> None:
        super().__init__("generator")
        self._launch = launch
        self._spawn = spawn
        self._publish = publish
        self._report = report
        self._resolve_model = resolve_model
        self._on_worker = on_worker
        self._on_resolved = on_resolved
        self._stall_timeout = stall_timeout
        self._cancel_grace = cancel_grace
        self._clock = clock
        self.worker: WorkerLink | None = None
        self._job: RunJob | None = None
        self._job_started = 0.0
        # (requested model name, what stands for it) of the pipeline the worker holds.
        self._loaded: tuple[str, ModelChoice] | None = None
        self._last_heartbeat = 0.0
        # Heartbeats received from every worker of this actor (the state dump shows it).
        self.heartbeats = 0
        self._last_rss: int | None = None
        self._expected_exit = False
        self._stopping = False
        # Cancels asked for (by `tell_nowait`) and not yet handled from the mailbox, and the job
        # waiting for its model with the scope that stops that wait.
        self._cancels: set[str] = set()
        self._resolving: tuple[str, anyio.CancelScope] | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def on_start(self) -> None:
        await self._start_worker()

    async def _start_worker(self) -> None:
        self.worker = await self._spawn(self._launch)
        self._expected_exit = False
        self._loaded = None
        self._last_heartbeat = self._clock()
        worker = self.worker
        self.spawn(lambda: self._read(worker), name="generator.reader")
        self.spawn(lambda: self._watch_process(worker), name="generator.process")
        self.spawn(lambda: self._watchdog(worker), name="generator.watchdog")
        log.info("worker %s ready on %s", worker.pid, worker.ready.device)
        if self._on_worker is not None:
            self._on_worker(worker.ready)

    async def on_stop(self) -> None:
        self._stopping = True
        if self.worker is not None:
            self._expected_exit = True
            with anyio.CancelScope(shield=True):
                await self.worker.shutdown(grace_s=self._cancel_grace)

    async def cleanup(self) -> None:
        # Invariant: no worker process outlives its actor, whatever ended the actor.
        if self.worker is not None:
            self._expected_exit = True
            await self.worker.aclose()

    def describe(self) -> dict[str, Any]:
        worker = self.worker
        return {
            "status": self.status.value,
            "pid": worker.pid if worker is not None and worker.returncode is None else None,
            "job_id": self._job.job_id if self._job else None,
            "device": worker.ready.device if worker is not None else None,
            "worker_place": worker.place if worker is not None else None,
            "heartbeat_age_s": round(self._clock() - self._last_heartbeat, 2)
            if worker is not None
            else None,
            "worker_rss_bytes": self._last_rss,
            "heartbeats": self.heartbeats,
            "model": self._loaded[0] if self._loaded else None,
        }

    # -- messages -----------------------------------------------------------------------------

    def tell_nowait(self, message: object) -> None:
        """As `Actor.tell_nowait`, except that a cancel does not queue behind the job it
        cancels: the mailbox is busy with that very job while it waits for its model (a repair
        or a re-download can take minutes), so the wait is stopped now and the job ends
        cancelled; the message still follows for a job already on the worker."""
        if isinstance(message, CancelJob):
            self._cancels.add(message.job_id)
            if self._resolving is not None and self._resolving[0] == message.job_id:
                self._resolving[1].cancel()
        super().tell_nowait(message)

    async def handle(self, message: object) -> object:
        match message:
            case RunJob():
                await self._run(message)
            case CancelJob():
                await self._cancel(message.job_id)
            case _:
                raise TypeError(f"generator got an unknown message {message!r}")
        return None

    async def _run(self, job: RunJob) -> None:
        if self._job is not None:
            raise RuntimeError(f"job {job.job_id} sent while {self._job.job_id} runs")
        if job.fresh_worker and self.worker is not None:
            await self._replace_worker()
        if self.worker is None or self.worker.returncode is not None:
            await self._start_worker()
        assert self.worker is not None
        self._job = job
        self._job_started = self._clock()
        current_job_id.set(job.job_id)
        if self._loaded is None or self._loaded[0] != job.model or job.repair_model:
            try:
                with anyio.CancelScope() as waiting:
                    self._resolving = (job.job_id, waiting)
                    if job.job_id in self._cancels:
                        waiting.cancel()  # cancelled before it started
                    choice = (
                        ModelChoice(job.model, job.model_path)
                        if job.model_path is not None
                        else await self._resolve(job.model, job.repair_model, job.mode)
                    )
                self._resolving = None
                if waiting.cancelled_caught:
                    # Whatever the loader was doing goes on by itself (the next job of this
                    # model finds it done); this job ends now.
                    self._finish(JobOutcome(job.job_id, cancelled=Cancelled(job_id=job.job_id)))
                    return
            except Exception as exc:  # the model can not be made available: the job's failure
                self._resolving = None
                report = ErrorReport.from_exception(
                    exc,
                    stage=Stage.LOAD,
                    device=job.options.device,
                    job_id=job.job_id,
                    context={"model": job.model},
                )
                self._finish(
                    JobOutcome(job.job_id, failed=Failed(job_id=job.job_id, report=report))
                )
                return
            self._loaded = (job.model, choice)
            if self._on_resolved is not None:
                await self._on_resolved(choice.name, choice.path)
            await self.worker.send(
                Load(
                    model_path=str(choice.path),
                    model_name=choice.name,
                    options=job.options,
                    pipeline_class=choice.pipeline_class,
                )
            )
        await self.worker.send(
            Generate(
                job_id=job.job_id,
                params=job.params,
                options=job.options,
                output_dir=str(job.output_dir),
                decode_only_from=job.decode_only_from,
                applied_changes=job.applied_changes,
                image_path=job.image_path,
                last_image_path=job.last_image_path,
                fit=job.fit,
            )
        )

    async def _replace_worker(self) -> None:
        """A planned restart: the old worker leaves (politely, then killed); not a failure."""
        old, self.worker = self.worker, None
        if old is not None:
            self._expected_exit = True
            await old.shutdown(grace_s=self._cancel_grace)
        self._loaded = None
        await self._start_worker()

    async def _resolve(self, model: str, repair: bool, mode: Mode) -> ModelChoice:
        if self._resolve_model is None:
            raise RuntimeError(f"no model path for {model!r} and no model loader to ask")
        return await self._resolve_model(model, repair, mode)

    async def _cancel(self, job_id: str) -> None:
        self._cancels.discard(job_id)
        if self._job is None or self._job.job_id != job_id or self.worker is None:
            return
        await self.worker.send(Cancel(job_id=job_id))
        worker = self.worker
        self.spawn(lambda: self._hard_cancel_after_grace(worker, job_id))

    async def _hard_cancel_after_grace(self, worker: WorkerLink, job_id: str) -> None:
        await anyio.sleep(self._cancel_grace)
        if self._job is None or self._job.job_id != job_id or worker is not self.worker:
            return
        log.warning(
            "job %s ignored cancel for %.1f s: killing the worker", job_id, self._cancel_grace
        )
        self._expected_exit = True
        worker.kill()
        await worker.wait()
        self._finish(JobOutcome(job_id=job_id, cancelled=Cancelled(job_id=job_id)))
        await worker.aclose()
        self.worker = None
        await self._start_worker()

    # -- background tasks ---------------------------------------------------------------------

    async def _read(self, worker: WorkerLink) -> None:
        while True:
            try:
                msg = await worker.receive()
            except (ChannelClosed, anyio.EndOfStream, anyio.ClosedResourceError):
                return  # the process watcher reports the death
            self._last_heartbeat = self._clock()
            match msg:
                case Heartbeat():
                    self.heartbeats += 1
                    self._last_rss = msg.rss_bytes
                case Progress():
                    self._publish(
                        ev.JobProgress(
                            job_id=msg.job_id,
                            stage=msg.stage,
                            step=msg.step,
                            total_steps=msg.total,
                            elapsed_s=msg.elapsed_s,
                            expert=msg.expert,
                        )
                    )
                case Loaded():
                    pass
                case Done():
                    choice = self._loaded[1] if self._loaded else None
                    self._finish(JobOutcome(job_id=msg.job_id, done=msg, model=choice))
                case Failed():
                    job_id = msg.job_id or (self._job.job_id if self._job else None)
                    if msg.job_id is None or msg.report.stage is Stage.LOAD:
                        # A failed load: whatever the worker holds is not the model asked for.
                        self._loaded = None
                    if job_id is not None:
                        self._finish(JobOutcome(job_id=job_id, failed=msg))
                case Cancelled():
                    self._finish(JobOutcome(job_id=msg.job_id, cancelled=msg))
                case StageTiming():
                    pass

    def _finish(self, outcome: JobOutcome) -> None:
        if self._job is None or self._job.job_id != outcome.job_id:
            return  # a late frame for a job already reported (e.g. killed on cancel)
        self._job = None
        current_job_id.set(None)
        self._report(outcome)

    async def _watch_process(self, worker: WorkerLink) -> None:
        code = await worker.wait()
        if self._expected_exit or self._stopping or worker is not self.worker:
            return
        raise WorkerCrashed(
            pid=worker.pid,
            exit_code=code,
            job_id=self._job.job_id if self._job else None,
            place=worker.place,
        )

    async def _watchdog(self, worker: WorkerLink) -> None:
        period = min(1.0, self._stall_timeout / 4)
        while worker is self.worker and worker.returncode is None:
            await anyio.sleep(period)
            silent = self._clock() - self._last_heartbeat
            if silent > self._stall_timeout and math.isfinite(self._stall_timeout):
                self._expected_exit = True
                worker.signal(signal.SIGKILL)
                await worker.wait()
                raise WorkerHung(
                    pid=worker.pid,
                    silent_s=silent,
                    job_id=self._job.job_id if self._job else None,
                )
