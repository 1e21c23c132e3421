"""A wedged NVML never stops the event loop: the VRAM monitor samples in a worker thread with a
deadline, skips the sample that outlived it, says so once, and recovers when the driver does."""

from __future__ import annotations

import time

import anyio
import pytest

from actors.vram.memory_sources import NvmlSource
from actors.vram_monitor import CurrentMemory, VramMonitor
from supervisor.bus.events import EventData, VramSample
from tests.fake_nvml import FakeNvml, GiB

pytestmark = pytest.mark.anyio


async def test_a_wedged_driver_skips_samples_and_degrades_without_blocking_the_loop() -> None:
    fake = FakeNvml()
    published: list[EventData] = []
    told: list[str | None] = []
    degraded, cleared = anyio.Event(), anyio.Event()

    def on_degraded(reason: str | None) -> None:
        told.append(reason)
        (cleared if reason is None else degraded).set()

    ticks_send, ticks_receive = anyio.create_memory_object_stream[None](0)
    monitor = VramMonitor(
        device="cuda:0",
        nvml=fake,
        publish=published.append,
        sample_deadline=0.2,
        on_degraded=on_degraded,
        wait_next=ticks_receive.receive,
        min_publish_gap=0.0,
    )
    loop_turns = 0
    worst_gap = 0.0

    async def loop_probe() -> None:
        # Stands for everything else on the loop (heartbeat watchdog, /healthz).
        nonlocal loop_turns, worst_gap
        last = time.monotonic()
        while True:
            await anyio.sleep(0.01)
            now = time.monotonic()
            worst_gap, last = max(worst_gap, now - last), now
            loop_turns += 1

    with anyio.fail_after(20), ticks_send, ticks_receive:
        async with anyio.create_task_group() as tg:
            await tg.start(monitor.run)
            assert isinstance(monitor.source, NvmlSource)
            assert monitor.source.device_name == "NVIDIA GeForce RTX 4080"
            await ticks_send.send(None)  # the first sample (taken at start) was fine
            assert monitor.samples_taken >= 1
            tg.start_soon(loop_probe)

            fake.wedge()
            await ticks_send.send(None)
            await degraded.wait()  # the deadline passed while the driver still blocks
            assert not fake._released.is_set()
            # The loop kept turning through the whole deadline the driver was blocked.
            assert loop_turns > 0
            assert monitor.wedged is not None
            assert "did not answer within 0.2 s" in monitor.wedged
            # The loop answers while the driver is stuck: the last reading, at once.
            latest = await monitor.ask(CurrentMemory(), type(monitor.latest))
            assert latest is not None
            assert latest.free == 14 * GiB
            # Another tick while the first call is stuck: skipped, no second caller in the driver.
            await ticks_send.send(None)
            await ticks_send.send(None)
            assert fake.blocked_calls == 1
            assert monitor.samples_skipped >= 2

            fake.release()
            while not cleared.is_set():
                await ticks_send.send(None)  # each send waits for the sampler's previous turn
            monitor.stop()
            tg.cancel_scope.cancel()

    assert told[0] is not None
    assert told[-1] is None
    assert len(told) == 2  # one message per change, however many samples were skipped
    assert sum(isinstance(e, VramSample) for e in published) >= 2
    # A figure, not a threshold: the loop's worst pause while the driver was blocked.
    print(f"worst loop gap during the wedge: {worst_gap * 1000:.1f} ms")  # noqa: T201 - with -s


async def test_a_driver_that_never_opens_leaves_no_source_and_says_why() -> None:
    fake = FakeNvml(max_block_s=5.0)
    fake.wedge()
    reasons: list[str | None] = []
    monitor = VramMonitor(
        device="cuda:0",
        nvml=_WedgedAtInit(fake),
        sample_deadline=0.1,
        on_degraded=reasons.append,
        wait_next=anyio.sleep_forever,
    )
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            await tg.start(monitor.run)
            # Never the host's RAM standing in for the GPU.
            assert monitor.source is None
            assert reasons
            assert reasons[0] is not None
            assert "while opening cuda:0" in reasons[0]
            monitor.stop()
            tg.cancel_scope.cancel()
    fake.release()


class _WedgedAtInit(FakeNvml):
    """A FAKE NVML whose nvmlInit hangs (a driver stuck at load)."""

    def __init__(self, inner: FakeNvml) -> None:
        super().__init__()
        self._inner = inner

    def nvmlInit(self) -> None:  # noqa: N802
        self._inner.nvmlDeviceGetMemoryInfo(0)
