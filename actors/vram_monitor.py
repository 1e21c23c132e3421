"""VRAM monitor actor: samples device memory, publishes `vram.sample` and `vram.pressure`.

A background task (spawned in the actor's own task group) samples the source every `interval`
seconds. `vram.sample` is published at most once per `min_publish_gap` (2/s by default) by the
injected clock; `vram.pressure` on every level change, never rate-limited (changes are rare by
construction: see `actors.vram.pressure`). `CurrentMemory` answers with the latest reading.

Which source is used is decided at start (`select_source`) unless one is injected: NVML when an
NVIDIA GPU can be read, else host RAM through psutil; `describe()` says which and why.

Invariant: the event loop never waits on the driver. With a `sample_deadline` (the runtime
always sets one) the source is opened and sampled in a worker thread; a call that outlives the
deadline is abandoned, that sample is skipped and `wedged` says why (`on_degraded` is told once
per change: the runtime makes it a degraded reason), and no second call enters the driver until
the stuck one returns.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio

from actors.actor import Actor
from actors.vram.memory_sources import (
    MemoryReading,
    MemorySource,
    SourceChoice,
    select_source,
)
from actors.vram.pressure import PressureThresholds, PressureTracker
from supervisor.bus.events import EventData
from supervisor.core.exceptions import ActorNotRunning, MemorySourceUnavailable

__all__ = ["CurrentMemory", "VramMonitor", "WorkerChanged"]

T = TypeVar("T")


class _Busy:
    """The driver is still held by a call that outlived its deadline."""


_BUSY = _Busy()


@dataclass(frozen=True, slots=True)
class CurrentMemory:
    """Ask: the latest `MemoryReading` (one is taken now if none was yet)."""


@dataclass(frozen=True, slots=True)
class WorkerChanged:
    """Tell: the worker process to report (and to count against a cap) is now `pid`."""

    pid: int | None


class VramMonitor(Actor):
    reply_errors = (MemorySourceUnavailable,)

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
        nvml: Any = None,
        sample_deadline: float | None = None,
        on_degraded: Callable[[str | None], None] | None = None,
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
        # The pynvml module to use (tests inject a named fake); None: import pynvml.
        self._nvml = nvml
        # None: sampled inline on the loop (tests that drive ticks one by one, scripted fakes).
        self._deadline = sample_deadline
        self._on_degraded = on_degraded
        # One call at a time (the sampler and an ask take turns), each bounded by the deadline.
        self._turn = anyio.Lock()
        # Held by the thread inside the source. A new turn's thread that finds it held knows the
        # previous call outlived its deadline, and leaves: a wedged call is never joined.
        self._in_driver = threading.Lock()
        self.samples_skipped = 0
        # Why the device is not being read now (the driver outlived the deadline), else None.
        self.wedged: str | None = None

    @property
    def source(self) -> MemorySource | None:
        return self._source

    async def on_start(self) -> None:
        if self._source is None:
            await self._open()
        self.spawn(self._sample_forever, name="vram_monitor.sampler")

    async def _open(self) -> bool:
        """Select the source within the deadline. A driver that does not answer leaves no
        source (never the host's RAM standing in for a GPU): each tick tries again."""
        choice = await self._bounded(self._select)
        if choice is None:
            self._set_wedged(
                f"NVML did not answer within {self._deadline:g} s while opening {self._device}: "
                "device memory is not read until it does"
            )
            return False
        self._source = choice.source
        self.nvml_unavailable = choice.nvml_unavailable
        self.degraded_reason = choice.degraded_reason
        return True

    def _select(self) -> SourceChoice:
        return select_source(
            self._device, cap=self._cap, expect_gpu=self._expect_gpu, nvml=self._nvml
        )

    async def _sample_forever(self) -> None:
        while True:
            await self.sample_bounded()
            await self._wait_next()

    async def _bounded(self, call: Callable[[], T]) -> T | None:
        """`call` in a worker thread, or None when it outlived the deadline (or an earlier call
        is still stuck in the driver); inline when there is no deadline."""
        if self._deadline is None:
            return call()
        async with self._turn:
            return await self._in_thread(call, self._deadline)

    async def _in_thread(self, call: Callable[[], T], deadline: float) -> T | None:
        def in_driver() -> T | _Busy:
            # Taken by the thread itself: a call that never started never holds it.
            if not self._in_driver.acquire(blocking=False):
                return _BUSY  # an earlier call outlived its deadline and is still in there
            try:
                return call()
            finally:
                self._in_driver.release()

        with anyio.move_on_after(deadline):
            result = await anyio.to_thread.run_sync(in_driver, abandon_on_cancel=True)
            return None if isinstance(result, _Busy) else result
        return None

    async def sample_bounded(self) -> MemoryReading | None:
        """One reading within the deadline, published as `sample_now` does; None (a skipped
        sample, the monitor degraded) when the source did not answer in time."""
        if self._source is None and not await self._open():
            self.samples_skipped += 1
            return None
        source = self._source
        assert source is not None
        reading = await self._bounded(source.sample)
        if reading is None:
            self.samples_skipped += 1
            self._set_wedged(
                f"{source.kind.value} memory readings of {source.device} did not answer "
                f"within {self._deadline:g} s: samples are skipped until they do"
            )
            return None
        self._set_wedged(None)
        return self._record(reading)

    def _set_wedged(self, reason: str | None) -> None:
        """Tell `on_degraded` of each change only: a wedge lasting minutes is one message."""
        if reason == self.wedged:
            return
        self.wedged = reason
        if self._on_degraded is not None:
            self._on_degraded(reason)

    def sample_now(self) -> MemoryReading:
        """Take one reading inline, publish what is due (tests that drive the monitor)."""
        if self._source is None:
            raise ActorNotRunning(actor=self.name)
        return self._record(self._source.sample())

    def _record(self, reading: MemoryReading) -> MemoryReading:
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
            if self.latest is not None:
                return self.latest
            reading = await self.sample_bounded()
            if reading is None:
                raise MemorySourceUnavailable(source="monitor", reason=str(self.wedged))
            return reading
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
            "wedged": self.wedged,
            "samples_skipped": self.samples_skipped,
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
