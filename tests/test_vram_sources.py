"""Memory sources: host (psutil, real process), NVML through a named fake pynvml module."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

from actors.vram.memory_sources import (
    CapAccounting,
    FakeScriptedSource,
    HostMemorySource,
    MemoryReading,
    NvmlSource,
    select_source,
)
from supervisor.bus.events import VramSource
from supervisor.core.exceptions import MemorySourceUnavailable

GiB = 1024**3


class FakeNvmlError(Exception):
    pass


@dataclass
class _Mem:
    total: int
    used: int
    free: int


@dataclass
class _Proc:
    pid: int
    usedGpuMemory: int  # noqa: N815 - NVML's field name


@dataclass
class _Util:
    gpu: int


class FakeNvmlModule:
    """A FAKE pynvml module: this machine has no NVIDIA GPU. Mirrors the calls NvmlSource makes."""

    NVMLError = FakeNvmlError

    def __init__(self, *, devices: int = 1, fail_init: str | None = None) -> None:
        self.devices = devices
        self.fail_init = fail_init
        self.worker_pid = 4242

    def nvmlInit(self) -> None:  # noqa: N802
        if self.fail_init:
            raise FakeNvmlError(self.fail_init)

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return self.devices

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:  # noqa: N802
        return index

    def nvmlDeviceGetName(self, handle: int) -> bytes:  # noqa: N802
        return b"NVIDIA Fake 24GB"

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> _Mem:  # noqa: N802
        return _Mem(total=24 * GiB, used=10 * GiB, free=14 * GiB)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[_Proc]:  # noqa: N802
        return [_Proc(self.worker_pid, 9 * GiB), _Proc(99, 1 * GiB)]

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> _Util:  # noqa: N802
        return _Util(gpu=87)

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: int) -> int:  # noqa: N802
        raise FakeNvmlError("Not Supported")

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: int) -> int:  # noqa: N802
        return 0x4 | 0x40


def test_nvml_source_reads_device_processes_utilization_and_throttling() -> None:
    fake = FakeNvmlModule()
    source = NvmlSource.open(0, nvml=fake)
    source.set_worker(fake.worker_pid)
    reading = source.sample()
    assert reading.source is VramSource.NVML
    assert (reading.device, reading.device_name) == ("cuda:0", "NVIDIA Fake 24GB")
    assert (reading.total, reading.used, reading.free) == (24 * GiB, 10 * GiB, 14 * GiB)
    assert reading.process_used == 9 * GiB
    assert len(reading.processes) == 2
    assert reading.utilization_pct == 87
    assert reading.throttle_reasons == ("sw_power_cap", "hw_thermal_slowdown")


def test_nvml_source_with_cap_counts_the_worker_against_it() -> None:
    fake = FakeNvmlModule()
    source = NvmlSource.open(0, cap=12 * GiB, nvml=fake)
    source.set_worker(fake.worker_pid)
    reading = source.sample()
    assert reading.total == 12 * GiB
    assert reading.free == 3 * GiB  # 12 GiB cap - 9 GiB used by the worker < 14 GiB free
    assert reading.used_fraction == pytest.approx(0.75)


def test_missing_nvml_is_reported_not_raised() -> None:
    fake = FakeNvmlModule(fail_init="NVML Shared Library Not Found")
    with pytest.raises(MemorySourceUnavailable, match="Library Not Found"):
        NvmlSource.open(0, nvml=fake)
    quiet = select_source("auto", nvml=fake)
    assert isinstance(quiet.source, HostMemorySource)
    assert quiet.nvml_unavailable == "NVML Shared Library Not Found"
    assert quiet.degraded_reason is None
    expected = select_source("cuda:0", expect_gpu=True, nvml=fake)
    assert expected.degraded_reason is not None
    assert "expected" in expected.degraded_reason


def test_missing_device_index_is_reported() -> None:
    choice = select_source("cuda:3", nvml=FakeNvmlModule(devices=1))
    assert isinstance(choice.source, HostMemorySource)
    assert choice.nvml_unavailable is not None
    assert "device 3" in choice.nvml_unavailable


def test_real_pynvml_on_this_machine_never_crashes() -> None:
    # This machine has the nvidia-ml-py package but no NVIDIA driver: a known situation.
    choice = select_source("auto")
    reading = choice.source.sample()
    assert reading.total > 0
    if isinstance(choice.source, HostMemorySource):
        assert choice.nvml_unavailable


def test_host_source_applies_cap_against_the_worker_address_space() -> None:
    plain = HostMemorySource().sample()
    assert plain.source is VramSource.HOST
    assert 0 < plain.free <= plain.total
    pid = os.getpid()
    capped = HostMemorySource(cap=plain.total * 4, worker_pid=pid).sample()
    assert capped.process_used is not None
    assert capped.process_used > 0
    assert capped.cap == plain.total * 4
    assert capped.free <= plain.total
    # A cap smaller than what the worker already maps leaves nothing free.
    tight = HostMemorySource(cap=1 * 1024**2, worker_pid=pid).sample()
    assert (tight.total, tight.free) == (1024**2, 0)
    assert tight.used_fraction == 1.0
    resident = HostMemorySource(
        cap=plain.total * 4, worker_pid=pid, accounting=CapAccounting.RESIDENT
    ).sample()
    # RSS <= VmSize. Compared on what each counted for the worker, not on `free`: `free` also
    # follows the host's available memory, which other processes move between two samples.
    assert resident.process_used is not None
    assert resident.process_used <= capped.process_used


def test_host_source_forgets_a_dead_worker() -> None:
    source = HostMemorySource(cap=GiB, worker_pid=2**22 + 12345)
    assert source.sample().process_used is None


def test_scripted_fake_replays_then_repeats_the_last() -> None:
    readings = [MemoryReading(VramSource.NVML, "cuda:0", "fake", 100, n, 100 - n) for n in (10, 20)]
    fake = FakeScriptedSource(readings)
    assert [fake.sample().used for _ in range(4)] == [10, 20, 20, 20]
    assert fake.exhausted
    assert fake.kind is VramSource.NVML
