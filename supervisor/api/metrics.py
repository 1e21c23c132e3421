"""Prometheus metrics of one server, fed from the bus by a subscriber in the control process.

Each app gets its own `CollectorRegistry` (several apps in one process never collide). Counters
move with the events this run publishes: the feed subscribes with ``since`` = the first number
of this run, so events published before it joined are replayed, never missed or counted twice.
Values that are facts of the moment (the supervisor's state, the queue, the bus's own counts,
the latest memory sample) are read at scrape time.

Counting rules: an error is counted once, when the supervisor enters ``failed`` (with the
transition's code), or when a job fails outside a failure walk (a pre-flight refusal); a
recovery is one visit to ``recovering``, labelled with the rung of the last recovery attempt in
it (``restart`` for a child restart) and ``ok`` when it ends in ready or degraded.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

import anyio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from supervisor.bus import Event
from supervisor.bus.events import (
    ActorRestarted,
    JobCancelled,
    JobFailed,
    JobProgress,
    JobStarted,
    JobSucceeded,
    RecoveryAttempt,
    SupervisorTransition,
    VramSample,
)
from supervisor.core.exceptions import BusClosed
from supervisor.core.states import State
from supervisor.runtime import Runtime

__all__ = ["METRIC_NAMES", "EventCounters", "MemoryHistory", "Metrics"]

log = logging.getLogger("genvisor.metrics")

# Every family /metrics exposes (the Grafana dashboard may use only these).
METRIC_NAMES = (
    "genvisor_jobs_total",
    "genvisor_job_duration_seconds",
    "genvisor_recoveries_total",
    "genvisor_errors_total",
    "genvisor_worker_restarts_total",
    "genvisor_supervisor_state",
    "genvisor_queue_depth",
    "genvisor_device_memory_bytes",
    "genvisor_bus_events_total",
    "genvisor_bus_dropped_total",
)
_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
_WALK = (State.FAILED, State.CATEGORIZING, State.RECOVERING)
# The generator's worker restarts; the other children are in-process actors.
_WORKER_ACTORS = ("generator",)


@dataclass(frozen=True, slots=True)
class MemorySample:
    ts: float
    device: str
    source: str
    total: int
    used: int
    free: int
    process_used: int | None


class MemoryHistory:
    """The device memory samples of the last `window_s` seconds (for the page's chart)."""

    def __init__(self, window_s: float = 300.0, max_samples: int = 4000) -> None:
        self.window_s = window_s
        self._samples: deque[MemorySample] = deque(maxlen=max_samples)

    def add(self, ts: float, data: VramSample) -> None:
        self._samples.append(
            MemorySample(
                ts=ts,
                device=data.device,
                source=data.source.value,
                total=data.total,
                used=data.used,
                free=data.free,
                process_used=data.process_used,
            )
        )
        while self._samples and self._samples[0].ts < ts - self.window_s:
            self._samples.popleft()

    def recent(self) -> list[dict[str, Any]]:
        return [
            {"ts": s.ts, "device": s.device, "total": s.total, "used": s.used, "free": s.free}
            for s in self._samples
        ]

    def latest(self) -> dict[str, MemorySample]:
        last: dict[str, MemorySample] = {}
        for sample in self._samples:
            last[sample.device] = sample
        return last


class _Now(Collector):
    """The values of the moment, read at each scrape."""

    def __init__(self, runtime: Runtime, memory: MemoryHistory) -> None:
        self.runtime = runtime
        self.memory = memory

    def collect(self) -> Iterable[Metric]:
        runtime = self.runtime
        state = GaugeMetricFamily(
            "genvisor_supervisor_state", "1 for the supervisor's current state", labels=["state"]
        )
        current = runtime.supervisor.state
        for s in State:
            state.add_metric([s.value], 1.0 if s is current else 0.0)
        yield state
        stats = runtime.bus.stats
        events = CounterMetricFamily("genvisor_bus_events", "Events published in this run")
        events.add_metric([], float(stats.last_seq - stats.resumed_after))
        yield events
        dropped = CounterMetricFamily(
            "genvisor_bus_dropped", "Events dropped for slow subscribers (each one announced)"
        )
        dropped.add_metric([], float(stats.dropped_total))
        yield dropped
        memory = GaugeMetricFamily(
            "genvisor_device_memory_bytes",
            "Latest memory sample of each device (kind: total, used, free, process)",
            labels=["device", "kind"],
        )
        for device, sample in sorted(self.memory.latest().items()):
            for kind, value in (
                ("total", sample.total),
                ("used", sample.used),
                ("free", sample.free),
                ("process", sample.process_used),
            ):
                if value is not None:
                    memory.add_metric([device, kind], float(value))
        yield memory


class EventCounters:
    """The counters and the memory history, fed one event at a time (`observe`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.memory = MemoryHistory()
        self.jobs = Counter("genvisor_jobs", "Jobs that ended, by status", ["status"], registry=r)
        self.duration = Histogram(
            "genvisor_job_duration_seconds",
            "Time per job stage (stage 'total': the whole job, attempts included)",
            ["model", "stage"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.recoveries = Counter(
            "genvisor_recoveries", "Recoveries, by rung and result", ["rung", "result"], registry=r
        )
        self.errors = Counter("genvisor_errors", "Failures, by error code", ["code"], registry=r)
        self.worker_restarts = Counter(
            "genvisor_worker_restarts", "Restarts of the generation worker", registry=r
        )
        for status in ("succeeded", "failed", "cancelled"):
            self.jobs.labels(status=status)
        self._state = State.STARTING
        self._rung: str | None = None
        # job id -> (model, stage, stage start ts)
        self._stages: dict[str, tuple[str, str | None, float]] = {}

    def observe(self, event: Event) -> None:
        """Count one event (never raises: metrics must not stop the feed)."""
        try:
            self._observe(event)
        except Exception:  # pragma: no cover - a bug here must not end the feed
            log.exception("metrics: could not count event %s", event.seq)

    def _observe(self, event: Event) -> None:
        data = event.data
        if isinstance(data, VramSample):
            self.memory.add(event.ts, data)
        elif isinstance(data, SupervisorTransition):
            self._transition(data)
        elif isinstance(data, RecoveryAttempt):
            self._rung = data.step
        elif isinstance(data, ActorRestarted):
            if data.actor.split(":", 1)[0] in _WORKER_ACTORS:  # "generator:cpu:1" too
                self.worker_restarts.inc()
            self._rung = self._rung or "restart"
        elif isinstance(data, JobStarted | JobProgress):
            self._stage(event.ts, data)
        elif isinstance(data, JobSucceeded | JobFailed | JobCancelled):
            self._ended(event.ts, data)

    def _transition(self, data: SupervisorTransition) -> None:
        if data.to_state is State.FAILED:
            self.errors.labels(code=data.error_code or "UNKNOWN").inc()
        if data.to_state is State.RECOVERING:
            self._rung = None
        if data.from_state is State.RECOVERING and data.to_state is not State.STOPPING:
            ok = data.to_state in (State.READY, State.DEGRADED)
            rung = self._rung or "restart"
            self.recoveries.labels(rung=rung, result="ok" if ok else "failed").inc()
        self._state = data.to_state

    def _stage(self, ts: float, data: JobStarted | JobProgress) -> None:
        if isinstance(data, JobStarted):
            self._close_stage(data.job_id, ts)
            self._stages[data.job_id] = (data.model, None, ts)
            return
        model, stage, began = self._stages.get(data.job_id, ("unknown", None, ts))
        if data.stage.value != stage:
            self._close_stage(data.job_id, ts)
            self._stages[data.job_id] = (model, data.stage.value, ts)

    def _close_stage(self, job_id: str, ts: float) -> None:
        model, stage, began = self._stages.get(job_id, ("unknown", None, ts))
        if stage is not None:
            self.duration.labels(model=model, stage=stage).observe(max(0.0, ts - began))
            self._stages[job_id] = (model, None, ts)

    def _ended(self, ts: float, data: JobSucceeded | JobFailed | JobCancelled) -> None:
        self._close_stage(data.job_id, ts)
        model = self._stages.pop(data.job_id, ("unknown", None, ts))[0]
        if isinstance(data, JobSucceeded):
            self.jobs.labels(status="succeeded").inc()
            self.duration.labels(model=model, stage="total").observe(data.duration_s)
        elif isinstance(data, JobCancelled):
            self.jobs.labels(status="cancelled").inc()
        else:
            self.jobs.labels(status="failed").inc()
            if self._state not in _WALK:
                self.errors.labels(code=str(data.error.get("code") or "UNKNOWN")).inc()


class Metrics:
    """The registry of one app and the bus subscriber that feeds it."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.registry = CollectorRegistry()
        self.counters = EventCounters(self.registry)
        self.memory = self.counters.memory
        self.queue = Gauge("genvisor_queue_depth", "Jobs waiting to run", registry=self.registry)
        self.registry.register(_Now(runtime, self.memory))

    async def exposition(self) -> bytes:
        """The text format, with the values of the moment read now."""
        self.queue.set(await self.runtime.store.waiting())
        return generate_latest(self.registry)

    # -- the feed -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def companion(self, app: Any = None) -> AsyncIterator[None]:
        """Beside the runtime for the app's lifetime: follow its bus."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._follow)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()

    async def _follow(self) -> None:
        """From the moment this process owns the data folder (at once standing alone; at the
        takeover in a follower) until its bus closes, which only a shutdown does."""
        runtime = self.runtime
        await runtime.wait_owner()
        bus = runtime.bus
        try:
            async with bus.subscribe(since=bus.stats.resumed_after) as subscription:
                async for event in subscription:
                    self.counters.observe(event)
        except BusClosed:
            pass
