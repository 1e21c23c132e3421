"""VRAM monitor actor: samples device memory, publishes `vram.sample` and `vram.pressure`.

A background task (spawned in the actor's own task group) samples the source every `interval`
seconds. `vram.sample` is published at most once per `min_publish_gap` (2/s by default) by the
injected clock; `vram.pressure` on every level change, never rate-limited (changes are rare by
construction: see `actors.vram.pressure`). `CurrentMemory` answers with the latest reading.

Which source is used is decided at start (`select_source`) unless one is injected: NVML when an
NVIDIA GPU can be read, else host RAM through psutil; `describe()` says which and why.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio

from actors.actor import Actor
from actors.vram.memory_sources import MemoryReading, MemorySource, select_source
from actors.vram.pressure import PressureThresholds, PressureTracker
from supervisor.bus.events import EventData
from supervisor.core.exceptions import ActorNotRunning

__all__ = ["CurrentMemory", "VramMonitor", "WorkerChanged"]


@dataclass(frozen=True, slots=True)
class CurrentMemory:
    """Ask: the latest `MemoryReading` (one is taken now if none was yet)."""


@dataclass(frozen=True, slots=True)
class WorkerChanged:
    """Tell: the worker process to report (and to count against a cap) is now `pid`."""

    pid: int | None


class VramMonitor(Actor):
    def __init__(
        self,
        source: MemorySource | None = None,
        *,
        publish: Callable[[EventData], object] | None = None,
        interval: float = 0.5,
        thresholds: PressureThresholds | None = None,
        device: str = "auto",
        cap: int | None = None,
        expect_gpu: bool = False,
        clock: Callable[[], float] = time.monotonic,
        wait_next: Callable[[], Awaitable[None]] | None = None,
        min_publish_gap: float = 0.5,
    ) -> None:
        super().__init__("vram_monitor")
        self._source = source
        self._publish = publish
        self.interval = interval
        self._tracker = PressureTracker(thresholds or PressureThresholds())
        self._device = device
        self._cap = cap
        self._expect_gpu = expect_gpu
        self._clock = clock
        # Tests drive sampling tick by tick; production sleeps `interval` between samples.
        self._wait_next = wait_next or (lambda: anyio.sleep(self.interval))
        self._min_gap = min_publish_gap
        self._last_publish: float | None = None
        self.latest: MemoryReading | None = None
        self.samples_taken = 0
        self.nvml_unavailable: str | None = None
        self.degraded_reason: str | None = None

    @property
    def source(self) -> MemorySource | None:
        return self._source

    async def on_start(self) -> None:
        if self._source is None:
            choice = select_source(self._device, cap=self._cap, expect_gpu=self._expect_gpu)
            self._source = choice.source
            self.nvml_unavailable = choice.nvml_unavailable
            self.degraded_reason = choice.degraded_reason
        self.spawn(self._sample_forever, name="vram_monitor.sampler")

    async def _sample_forever(self) -> None:
        while True:
            self.sample_now()
            await self._wait_next()

    def sample_now(self) -> MemoryReading:
        """Take one reading, publish what is due; runs on the actor's own task group."""
        if self._source is None:
            raise ActorNotRunning(actor=self.name)
        reading = self._source.sample()
        self.latest = reading
        self.samples_taken += 1
        now = self._clock()
        if self._publish is not None:
            if self._last_publish is None or now - self._last_publish >= self._min_gap:
                self._last_publish = now
                self._publish(reading.to_event())
            change = self._tracker.observe(reading.device, reading.used_fraction)
            if change is not None:
                self._publish(change)
        else:
            self._tracker.observe(reading.device, reading.used_fraction)
        return reading

    async def handle(self, message: object) -> object:
        if isinstance(message, CurrentMemory):
            return self.latest if self.latest is not None else self.sample_now()
        if isinstance(message, WorkerChanged):
            if self._source is not None:
                self._source.set_worker(message.pid)
            return None
        raise TypeError(f"vram_monitor got an unknown message {message!r}")

    def describe(self) -> dict[str, Any]:
        latest = self.latest
        return {
            "status": self.status.value,
            "source": None if self._source is None else self._source.describe(),
            "nvml_unavailable": self.nvml_unavailable,
            "degraded_reason": self.degraded_reason,
            "interval_s": self.interval,
            "pressure": {d: lvl.value for d, lvl in self._tracker.levels.items()},
            "latest": None
            if latest is None
            else {
                "device": latest.device,
                "device_name": latest.device_name,
                "total": latest.total,
                "used": latest.used,
                "free": latest.free,
                "process_used": latest.process_used,
                "utilization_pct": latest.utilization_pct,
                "throttle_reasons": list(latest.throttle_reasons),
                "cap": latest.cap,
            },
        }
