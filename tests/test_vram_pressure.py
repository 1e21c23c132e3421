"""Pressure levels with hysteresis, and the monitor actor driven by a scripted (fake) source."""

from __future__ import annotations

import anyio
import pytest

from actors.vram.memory_sources import FakeScriptedSource, MemoryReading
from actors.vram.pressure import PressureThresholds, PressureTracker, next_level
from actors.vram_monitor import CurrentMemory, VramMonitor, WorkerChanged
from supervisor.bus.events import EventData, PressureLevel, VramPressure, VramSample, VramSource

N, W, C = PressureLevel.NORMAL, PressureLevel.WARNING, PressureLevel.CRITICAL
T = PressureThresholds(warning=0.85, critical=0.95, margin=0.05)


@pytest.mark.parametrize(
    ("current", "fraction", "expected"),
    [
        (N, 0.84, N),
        (N, 0.85, W),  # up exactly at the threshold
        (N, 0.95, C),
        (W, 0.81, W),  # down only below 0.85 - 0.05
        (W, 0.7999, N),
        (C, 0.91, C),
        (C, 0.8999, W),
        (C, 0.5, N),
    ],
)
def test_next_level_hysteresis(
    current: PressureLevel, fraction: float, expected: PressureLevel
) -> None:
    assert next_level(current, fraction, T) is expected


def test_thresholds_are_validated() -> None:
    with pytest.raises(ValueError, match="warning"):
        PressureThresholds(warning=0.9, critical=0.8)


def test_tracker_reports_only_changes() -> None:
    tracker = PressureTracker(T)
    assert tracker.observe("cuda:0", 0.5) is None
    event = tracker.observe("cuda:0", 0.9)
    assert event == VramPressure(device="cuda:0", level=W, previous=N)
    assert tracker.observe("cuda:0", 0.86) is None


def _reading(fraction: float) -> MemoryReading:
    total = 1000
    used = int(fraction * total)
    return MemoryReading(VramSource.NVML, "cuda:0", "fake GPU", total, used, total - used)


FRACTIONS = [0.5, 0.86, 0.83, 0.81, 0.79, 0.96, 0.92, 0.90, 0.89, 0.84, 0.5, 0.5]


@pytest.mark.anyio
async def test_monitor_publishes_pressure_changes_and_rate_limited_samples() -> None:
    published: list[EventData] = []
    now = [0.0]
    ticks_send, ticks_receive = anyio.create_memory_object_stream[None](0)

    async def wait_next() -> None:
        await ticks_receive.receive()
        now[0] += 0.1  # ten samples a second, by the injected clock

    source = FakeScriptedSource([_reading(f) for f in FRACTIONS])
    monitor = VramMonitor(
        source, publish=published.append, thresholds=T, clock=lambda: now[0], wait_next=wait_next
    )
    with anyio.fail_after(10), ticks_send, ticks_receive:
        async with anyio.create_task_group() as tg:
            await tg.start(monitor.run)
            for _ in FRACTIONS[1:]:
                await ticks_send.send(None)  # returns once the sampler is waiting again
            await anyio.wait_all_tasks_blocked()
            assert source.samples_taken == len(FRACTIONS)
            latest = await monitor.ask(CurrentMemory(), MemoryReading)
            assert latest.used == 500
            await monitor.ask(WorkerChanged(pid=1234), type(None))
            assert source.worker_pid == 1234
            description = monitor.describe()
            monitor.stop()
            tg.cancel_scope.cancel()

    changes = [(e.previous, e.level) for e in published if isinstance(e, VramPressure)]
    assert changes == [(N, W), (W, N), (N, C), (C, W), (W, N)]
    samples = [e for e in published if isinstance(e, VramSample)]
    # 12 samples 0.1 s apart: at most 2/s means one every 5 samples (t = 0.0, 0.5, 1.0).
    assert len(samples) == 3
    assert [s.used for s in samples] == [500, 960, 500]
    assert description["pressure"] == {"cuda:0": "normal"}
    assert description["source"] == {"source": "scripted-fake", "device": "cuda:0"}


@pytest.mark.anyio
async def test_monitor_default_construction_selects_a_source() -> None:
    monitor = VramMonitor(wait_next=anyio.sleep_forever)
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(monitor.run)
            reading = await monitor.ask(CurrentMemory(), MemoryReading)
            assert reading.total > 0
            assert monitor.describe()["source"] is not None
            monitor.stop()
    assert monitor.samples_taken >= 1
