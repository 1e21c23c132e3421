"""`device = "auto"` is decided once at start and given to every actor; learned strategies are
keyed by the device's real name; a CPU job is budgeted from host memory even when a GPU is
visible. NVML is a named FAKE (tests/fake_nvml.py): this machine has no NVIDIA GPU."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from actors.vram.device import host_cpu_name, resolve_device
from actors.vram.memory_sources import HostMemorySource, NvmlSource
from actors.worker.protocol import Ready
from supervisor.bus.events import VramSource
from supervisor.core.params import Dtype, GenerationParams
from supervisor.core.settings import load_settings
from supervisor.jobs import Job, new_job_id
from supervisor.runtime import Runtime
from supervisor.runtime.children import vram_monitor, worker_launch
from tests.fake_nvml import FakeNvml, GiB

RTX = "NVIDIA GeForce RTX 4080"


def test_auto_is_the_first_gpu_nvml_can_read_named_by_its_real_name() -> None:
    found = resolve_device("auto", nvml=FakeNvml(name=RTX))
    assert (found.device, found.name) == ("cuda:0", RTX)
    assert found.strategy_device == f"cuda:{RTX}"
    assert resolve_device("cuda", nvml=FakeNvml(name=RTX)).device == "cuda:0"


def test_auto_without_a_gpu_is_the_cpu_named_by_the_host_model() -> None:
    none = resolve_device("auto", nvml=FakeNvml(devices=0))
    assert none.device == "cpu"
    assert none.name == host_cpu_name()
    assert none.strategy_device == f"cpu:{host_cpu_name()}"
    assert "no NVIDIA GPU" in none.why
    assert resolve_device("cpu", nvml=FakeNvml()).device == "cpu"  # set: NVML not asked


def test_host_cpu_name_reads_the_model_line(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9654 96-Core Processor\n")
    assert host_cpu_name(info) == "AMD EPYC 9654 96-Core Processor"


def test_a_wedged_driver_at_start_delays_the_decision_by_the_timeout_only() -> None:
    fake = FakeNvml(max_block_s=10.0)
    fake.wedge()
    wedged = _WedgedAtInit(fake)
    found = resolve_device("auto", nvml=wedged, timeout=0.2)  # not the 10 s the probe blocks
    fake.release()
    assert found.device == "cpu"
    assert "no answer within 0.2 s" in found.why
    explicit = resolve_device("cuda:1", nvml=FakeNvml(devices=1))
    assert (explicit.device, explicit.name) == ("cuda:1", "cuda:1")  # kept as set


class _WedgedAtInit(FakeNvml):
    """A FAKE NVML whose nvmlInit hangs (a driver stuck at load)."""

    def __init__(self, inner: FakeNvml) -> None:
        super().__init__()
        self._inner = inner

    def nvmlInit(self) -> None:  # noqa: N802
        self._inner.nvmlDeviceGetMemoryInfo(0)


@contextmanager
def _runtime(home: Path, nvml: Any, **settings: Any) -> Iterator[Runtime]:
    runtime = Runtime(load_settings(overrides={"home": home, **settings}), nvml=nvml)
    runtime.claim()
    try:
        yield runtime
    finally:
        # Never run: its supervisor's mailbox is closed here (run would close it).
        runtime.supervisor.stop()
        runtime.supervisor._receive.close()
        runtime.store.sync.close()
        runtime.strategies.close()
        runtime.journal.close()
        runtime.home_lock.release()


def _job() -> Job:
    params = GenerationParams(prompt="a lighthouse", width=32, height=32, num_frames=5, steps=2)
    return Job(id=new_job_id(), model="tiny-wan", params=params)


@pytest.mark.anyio
async def test_auto_with_a_visible_gpu_is_given_to_every_actor(tmp_path: Path) -> None:
    with _runtime(tmp_path / "home", FakeNvml(name=RTX), device="auto") as runtime:
        assert runtime.device == "cuda:0"
        assert worker_launch(runtime).device == "cuda:0"
        assert runtime.base_options().device == "cuda:0"
        # dtype "auto" follows the device: bfloat16 on a GPU, as Wan's weights are published.
        assert runtime.base_options().dtype is Dtype.BFLOAT16
        assert runtime.accounting.device == "cuda:0"
        monitor = vram_monitor(runtime)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                await tg.start(monitor.run)
                monitor.stop()
        source = monitor.source
        assert isinstance(source, NvmlSource)
        assert (source.device, source.device_name) == ("cuda:0", RTX)
        # The key promised as cuda:<GPU name> (it read "cuda:cuda:0").
        assert runtime.memory.key(_job()).device == f"cuda:{RTX}"


@pytest.mark.anyio
async def test_a_cpu_job_is_budgeted_from_host_memory_with_a_gpu_visible(tmp_path: Path) -> None:
    fake = FakeNvml(name=RTX, total=16 * GiB, free=14 * GiB)
    with _runtime(tmp_path / "home", fake, device="cpu", expect_gpu=True) as runtime:
        assert runtime.device == "cpu"
        assert runtime.base_options().dtype is Dtype.FLOAT32
        # The worker here is this process: the budget counts what it holds, as for a worker.
        ready = Ready(pid=os.getpid(), device="cpu", torch_version="-", diffusers_version="-")
        runtime.accounting.worker_changed(ready)
        monitor = vram_monitor(runtime)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                await tg.start(monitor.run)
                reading = await monitor.sample_bounded()
                monitor.stop()
                tg.cancel_scope.cancel()
        assert isinstance(monitor.source, HostMemorySource)
        assert not isinstance(monitor.source, NvmlSource)
        assert reading is not None
        sample = runtime.accounting.last_sample
        assert sample is not None
        assert sample.source is VramSource.HOST
        budget = runtime.accounting.budget(_job())
        assert budget == sample.free + (sample.process_used or 0)
        assert budget != fake.free  # not the GPU's 14 GiB free
        assert runtime.memory.key(_job()).device == f"cpu:{host_cpu_name()}"


def test_an_explicit_dtype_is_kept_on_any_device(tmp_path: Path) -> None:
    with _runtime(tmp_path / "home", FakeNvml(devices=0), device="cpu", dtype="bfloat16") as rt:
        assert rt.base_options().dtype is Dtype.BFLOAT16
