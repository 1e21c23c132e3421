"""The genvisor runtime: settings, event bus, journal and the supervisor with its children.

This is the composition root. A host FastAPI app embeds it through `lifespan` and `router`
(see `supervisor.api.app`); `genvisor serve` is the same runtime standing alone.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskStatus

from actors.actor import Actor
from actors.models.registry import load_registry
from actors.vram.device import ResolvedDevice
from actors.vram.memory_sources import MemorySource
from actors.vram_monitor import WorkerChanged
from actors.worker.protocol import Ready
from supervisor.bus import EventBus, Journal
from supervisor.bus import events as ev
from supervisor.core.exceptions import ActorNotRunning, HomeInUse, MailboxFull
from supervisor.core.home_lock import HomeLock
from supervisor.core.params import Dtype, PipelineOptions
from supervisor.core.settings import CONFIG_DIR, Settings
from supervisor.errors import (
    Categorization,
    CategorizationContext,
    ErrorReport,
    default_categorizer,
)
from supervisor.jobs import AsyncJobStore, Job
from supervisor.jobs.input_store import InputStore
from supervisor.recovery.calibration import CalibrationStore
from supervisor.recovery.diagnosis import Diagnosis, diagnose
from supervisor.recovery.learned_strategies import LearnedStrategies
from supervisor.runtime.children import default_child_specs, worker_spawner
from supervisor.runtime.device_parts import DeviceParts, build_device_parts
from supervisor.runtime.ownership import follow_owner, run_or_exit, terminate_process
from supervisor.runtime.start_up import (
    TELEMETRY_KEY,
    degrade_for_start_findings,
    learn_local_weights,
    purge_old_jobs,
    resume_interrupted,
)
from supervisor.supervision.child_spec import ChildSpec
from supervisor.supervision.job_decider import JobDecider
from supervisor.supervision.job_flow import JobFlow
from supervisor.supervision.lanes import GENERATOR, Lane
from supervisor.supervision.messages import ClearDegraded, Degrade, JobSubmitted
from supervisor.supervision.model_resolution import ModelResolver
from supervisor.supervision.supervisor import Supervisor

__all__ = ["Runtime"]

log = logging.getLogger("genvisor.runtime")

HEAVY_MODULES = ("torch", "diffusers", "transformers")


def _error_code_of(report: ErrorReport) -> str | None:
    verdict = default_categorizer().categorize(report, CategorizationContext.from_report(report))
    return verdict.code.value


class Runtime:
    """Owns everything that lives for one server run."""

    def __init__(
        self,
        settings: Settings,
        *,
        child_specs: list[ChildSpec] | None = None,
        nvml: Any = None,
        memory_source: MemorySource | None = None,
        share_home: bool = True,
    ) -> None:
        """`nvml` replaces the pynvml module and `memory_source` the VRAM monitor's own choice
        (tests: this machine has no NVIDIA GPU)."""
        self.settings = settings
        self.nvml = nvml
        self.memory_source = memory_source
        # Construction opens nothing: `claim` (by `create_app`, `run` or the election in
        # `lifespan`) takes the data folder's lock, then opens the stores. With `share_home`
        # (the default: a host app may run in several worker processes) the lifespan of a
        # process that finds the lock held follows its owner and takes over when it dies;
        # without it (`genvisor serve`) a held lock is refused at once.
        self.share_home = share_home
        self._child_specs = child_specs
        self.home_lock = HomeLock(settings.home)
        self._opened = False
        self._serving = False
        self._stop_requested = False
        self._stopped: anyio.Event | None = None
        self._became_owner: anyio.Event | None = None
        self._owner_suspect: anyio.Event | None = None
        self._follow_scope: anyio.CancelScope | None = None
        # Entered by `lifespan` (with the app) while the home is shared: the api layer's
        # forwarding (see supervisor.api.forwarding), which this layer must not import.
        self.companions: dict[str, Callable[[Any], AbstractAsyncContextManager[None]]] = {}
        # What ended `run` after start-up, and what is done about it: by default the process
        # gets SIGTERM, so the ASGI server shuts down the way an operator's stop does.
        self.fatal: BaseException | None = None
        self.on_fatal: Callable[[BaseException], None] = terminate_process

    def claim(self) -> None:
        """Take the data folder's lock (or raise `HomeInUse` at once), then open the stores.

        Invariant: the lock comes before any store opens or worker starts, so a second
        instance on the same folder changes nothing before it is refused."""
        if self._opened:
            return
        self.home_lock.acquire()
        try:
            self._open(self.settings, self._child_specs)
        except BaseException:
            self.home_lock.release()
            raise
        self._opened = True

    @property
    def owns_home(self) -> bool:
        """This process's runtime runs (it holds the data folder); else requests go to the
        process that does (a follower in a multi-process host)."""
        return self._serving

    def _open(self, settings: Settings, child_specs: list[ChildSpec] | None) -> None:
        self.journal = Journal(
            settings.home / "events.sqlite3", retention=settings.journal_retention
        )
        self.bus = EventBus(self.journal, buffer=settings.subscriber_buffer)
        self.registry = load_registry(CONFIG_DIR, [settings.models_file])
        self.spawn_worker = worker_spawner(settings, self.registry)
        self.strategies = LearnedStrategies(settings.home / "vram.sqlite3")
        if settings.clear_learned_strategies:
            self.strategies.clear()
        # Invariant: "auto" is decided here, once; every actor gets its device, never the
        # setting. One set of parts per device; the first is the runtime's own (one device: the
        # only one, exactly as before a `devices` list existed).
        self.device_parts = build_device_parts(
            settings,
            strategies=self.strategies,
            calibration=CalibrationStore(settings.home / "vram.sqlite3"),
            nvml=self.nvml,
        )
        first = self.device_parts[0]
        self.resolved: ResolvedDevice = first.resolved
        self.accounting = first.accounting
        self.memory = first.memory
        self.output_dir = settings.home / "outputs"
        self.output_dir.mkdir(parents=True, exist_ok=True)
        # The loop reaches SQLite only through the store's worker thread.
        self.store = AsyncJobStore.open(settings.home / "jobs.sqlite3")
        # Uploaded images, content-addressed (POST /v1/inputs); jobs name them by id.
        self.inputs = InputStore(settings.home / "inputs")
        # The one place that decides every retry, fail and cancel of a job.
        self.decider = JobDecider(
            output_dir=self.output_dir,
            crash_retries=settings.job_crash_retries,
            memory=self.memory.planner,
            allow_fallback=settings.allow_fallback_models,
            inputs=self.inputs,
        )
        self.jobs = JobFlow(
            self.store,
            publish=self.bus.publish,
            generator=lambda: self.supervisor.child(GENERATOR),
            decider=self.decider,
            diagnose=self._diagnose,
            memory=self.memory,
            lanes=self._lanes(),
        )
        specs = child_specs if child_specs is not None else self.default_child_specs()
        self.supervisor = Supervisor(
            specs,
            publish=self.bus.publish,
            error_code_of=_error_code_of,
            history_size=settings.transition_history,
            jobs=self.jobs,
        )
        self.started_at = time.time()
        self.resolve_model = ModelResolver(
            lambda: self.supervisor.child("model_loader"), self.decider
        )

    def _lanes(self) -> list[Lane] | None:
        """A lane per device of a `devices` list (None with one device)."""
        if len(self.device_parts) == 1 and self.device_parts[0].child_id == GENERATOR:
            return None
        return [
            Lane(p.label, p.child_id, partial(self.supervisor_child, p.child_id), p.memory)
            for p in self.device_parts
        ]

    def supervisor_child(self, child_id: str) -> Actor | None:
        return self.supervisor.child(child_id)

    def worker_changed(self, ready: Ready, parts: DeviceParts | None = None) -> None:
        """A worker said ready: its device's accounting learns its baseline, its device's VRAM
        monitor follows it (CPU workers after the first have none of their own)."""
        parts = parts or self.device_parts[0]
        parts.accounting.worker_changed(ready)
        first = parts is self.device_parts[0]
        monitor = self.supervisor.child("vram_monitor" if first else parts.monitor_id)
        if monitor is not None and monitor.running:
            monitor.tell_nowait(WorkerChanged(ready.pid))

    async def model_resolved(self, model: str, path: Path) -> None:
        """A model's files were resolved on one device: every device's pre-flight learns its
        weights (placement compares them all)."""
        for parts in self.device_parts:
            await parts.accounting.model_resolved(model, path)

    @property
    def worker_ready(self) -> Ready | None:
        return self.accounting.worker_ready

    @property
    def calibration(self) -> CalibrationStore:
        return self.accounting.calibration

    def _diagnose(
        self,
        report: ErrorReport,
        *,
        applied: Sequence[str] = (),
        facts: dict[str, object] | None = None,
        verdict: Categorization | None = None,
    ) -> Diagnosis:
        """`diagnose` with the numbers only this process knows (what a load on a CPU needs
        and what the cap leaves)."""
        device = self.jobs.device_of(report.job_id)
        parts = next((p for p in self.device_parts if p.label == device), self.device_parts[0])
        known = {**(facts or {}), **parts.accounting.load_facts(report, self.base_options())}
        return diagnose(report, applied=applied, facts=known, verdict=verdict)

    def base_options(self) -> PipelineOptions:
        """The options a job starts with before pre-flight or recovery change anything."""
        return PipelineOptions(device=self.device, dtype=self.dtype)

    def publish(self, data: ev.EventData, parts: DeviceParts | None = None) -> object:
        """Publish; `parts`: the device whose VRAM monitor sampled (None: the first's)."""
        # Invariant: the running job's live progress follows its events (one loop, no lock).
        if isinstance(data, ev.JobProgress):
            self.jobs.progress(data.job_id, data.stage, data.step)
        elif isinstance(data, ev.VramSample):
            # Each GPU has its own monitor; the host's memory is every CPU worker's.
            sampled = parts or self.device_parts[0]
            for each in self.device_parts:
                if each is sampled or (each.device == "cpu" and sampled.device == "cpu"):
                    each.accounting.sampled(data)
        return self.bus.publish(data)

    @property
    def device(self) -> str:
        return self.resolved.device

    @property
    def dtype(self) -> Dtype:
        """The setting, with "auto" decided by the resolved device (bfloat16 on a GPU)."""
        if self.settings.dtype != "auto":
            return Dtype(self.settings.dtype)
        return Dtype.BFLOAT16 if self.device.startswith("cuda") else Dtype.FLOAT32

    def telemetry_changed(self, reason: str | None, parts: DeviceParts | None = None) -> None:
        """The monitor's device stopped (reason) or went back to (None) answering in time."""
        first = parts is None or parts is self.device_parts[0]
        key = TELEMETRY_KEY if first or parts is None else parts.monitor_id
        message = ClearDegraded(key) if reason is None else Degrade(key, reason)
        try:
            self.supervisor.tell_nowait(message)
        except (ActorNotRunning, MailboxFull):
            log.warning("device telemetry: %s (the supervisor was not told)", reason or "back")

    def default_child_specs(self) -> list[ChildSpec]:
        return default_child_specs(self)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the bus and the supervisor until `shutdown()`; the journal is flushed on exit."""
        self.claim()
        # Said once the server starts, not when the folder is claimed: a refused start (a port
        # taken) prints its one line and nothing else.
        log.info("device %s (%s)", self.resolved.device, self.resolved.why)
        self._stopped = anyio.Event()
        if self._stop_requested:
            self._stopped.set()
        await purge_old_jobs(self)
        await resume_interrupted(self)
        async with anyio.create_task_group() as tg:
            await tg.start(self.bus.run)
            await tg.start(self.supervisor.run)
            tg.start_soon(degrade_for_start_findings, self)
            # Header reads in threads, done long before a worker is ready for a first job.
            tg.start_soon(learn_local_weights, self)
            task_status.started()
            self._serving = True
            if self._became_owner is not None:
                self._became_owner.set()
            try:
                await self._stopped.wait()
            finally:
                self._serving = False
            self.supervisor.stop()
            # The supervisor stops its children in reverse order, then its own loop ends; the
            # bus closes last so that the stop transitions reach the journal.
            with anyio.CancelScope(shield=True):
                await self.supervisor.finished()
                tg.cancel_scope.cancel()
        with anyio.CancelScope(shield=True):
            await self.bus.aclose()
        with anyio.CancelScope(shield=True):
            await self.store.close()
        self.strategies.close()
        self.calibration.close()  # one store, shared by every device's parts
        self.home_lock.release()

    def stores(self) -> list[tuple[str, Any]]:
        """Every durable store with its `heal_report` (damage found at open) and `damage`
        (corruption met while running). Learned strategies and calibration share one file,
        healed by the first to open it."""
        return [
            ("journal", self.journal),
            ("jobs", self.store),
            ("learned strategies", self.strategies),
            ("calibration", self.accounting.calibration),
        ]

    async def submit(self, job: Job) -> Job:
        """Commit the job, wake the supervisor, and return once the job survives a power cut
        (the API answers 202 after it). The commit runs on the store's thread; the sync of the
        disk runs while the supervisor already starts the job: the disk's latency (0.3-2 ms on
        the test machine) is paid by the acknowledgement, not by the job. The bus is told at
        the commit, as it is told of every event before its journal is synced."""
        two = job.model in self.registry and self.registry.get(job.model).experts == 2
        if two != job.options.two_experts:
            job = replace(job, options=job.options.model_copy(update={"two_experts": two}))
        position = await self.store.accept(job)
        self.bus.publish(ev.JobQueued(job_id=job.id, position=position or 0))
        self.supervisor.tell_nowait(JobSubmitted(job.id))
        await self.store.make_durable()
        return job

    def shutdown(self) -> None:
        self._stop_requested = True
        if self._follow_scope is not None:
            self._follow_scope.cancel()
        if self._stopped is not None:
            self._stopped.set()

    @asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[None]:
        """An ASGI lifespan: the runtime runs as a sidecar task group for the app's lifetime.

        The election: a runtime not yet claimed takes the lock; when another process holds it
        and the home is shared, this process follows (its routes forward to the owner) and
        takes over when the owner's lock is released (the kernel releases it when the owner
        dies). Without `share_home` a held lock fails start-up at once."""
        self._became_owner = anyio.Event()
        self._owner_suspect = anyio.Event()
        try:
            self.claim()
        except HomeInUse as exc:
            if not self.share_home:
                raise
            log.info(
                "genvisor: pid %s owns %s; this process (pid %d) follows it (forwards to it)",
                exc.pid,
                self.settings.home,
                os.getpid(),
            )
        async with anyio.create_task_group() as tg:
            if self._opened:
                await tg.start(run_or_exit, self)
            else:
                tg.start_soon(follow_owner, self)
            try:
                async with AsyncExitStack() as stack:
                    if self.share_home:
                        for companion in self.companions.values():
                            await stack.enter_async_context(companion(app))
                    yield
            finally:
                self.shutdown()

    async def wait_owner(self) -> None:
        """Return once this process owns the data folder (its runtime runs)."""
        if self._serving:
            return
        if self._became_owner is None:
            raise RuntimeError("wait_owner needs the runtime's lifespan")
        await self._became_owner.wait()

    def suspect_owner_gone(self) -> None:
        """A follower found the owner unreachable: try the lock now, not at the next poll."""
        if self._owner_suspect is not None:
            self._owner_suspect.set()
