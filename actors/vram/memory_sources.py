"""Where memory readings come from: NVML (NVIDIA), the host (psutil) or a scripted fake.

Every source answers `sample()` with a `MemoryReading` of one device. A source that cannot work
here (no NVML library, no NVIDIA GPU) raises `MemorySourceUnavailable` when it is opened, and
`select_source` turns that into a known situation: the host source is used instead, and the
reason is kept (a degraded reason only when a GPU was expected).

A memory cap (setting `device_memory_limit`) shrinks what the worker may use: the reading then
reports ``total = min(device total, cap)`` and ``free = min(device free, cap - worker usage)``.
On the CPU the cap is RLIMIT_AS, so the worker usage counted against it is its address space
(VmSize), not its RSS.

Invariant: this module never imports torch; pynvml is imported lazily and only by `NvmlSource`.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

import psutil

from supervisor.bus.events import VramSample, VramSource
from supervisor.core.exceptions import MemorySourceUnavailable

__all__ = [
    "CapAccounting",
    "FakeScriptedSource",
    "HostMemorySource",
    "MemoryReading",
    "MemorySource",
    "NvmlSource",
    "ProcessMemory",
    "SourceChoice",
    "select_source",
]

# NVML's clock-event ("throttle") reason bits: stable constants of the NVML API.
_THROTTLE_BITS: dict[int, str] = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}


class CapAccounting(StrEnum):
    """What of the worker's memory counts against a CPU cap."""

    ADDRESS_SPACE = "address_space"  # RLIMIT_AS: VmSize
    RESIDENT = "resident"  # RSS


@dataclass(frozen=True, slots=True)
class ProcessMemory:
    pid: int
    used: int


@dataclass(frozen=True, slots=True)
class MemoryReading:
    """One device's memory, in bytes. ``total``/``free`` already account for a cap."""

    source: VramSource
    device: str
    device_name: str
    total: int
    used: int
    free: int
    process_used: int | None = None
    processes: tuple[ProcessMemory, ...] = ()
    utilization_pct: int | None = None
    throttle_reasons: tuple[str, ...] = ()
    cap: int | None = None

    @property
    def used_fraction(self) -> float:
        return 0.0 if self.total <= 0 else min(1.0, max(0.0, (self.total - self.free) / self.total))

    def to_event(self) -> VramSample:
        return VramSample(
            source=self.source,
            device=self.device,
            total=self.total,
            used=self.used,
            free=self.free,
            process_used=self.process_used,
        )


def _apply_cap(reading: MemoryReading, cap: int | None, worker_usage: int | None) -> MemoryReading:
    if cap is None:
        return reading
    total = min(reading.total, cap)
    headroom = cap - (worker_usage or 0)
    free = max(0, min(reading.free, headroom))
    return replace(reading, total=total, free=free, used=total - free, cap=cap)


@runtime_checkable
class MemorySource(Protocol):
    kind: VramSource
    device: str

    def sample(self) -> MemoryReading: ...

    def set_worker(self, pid: int | None) -> None:
        """The worker process whose usage is reported (and counted against a cap)."""

    def describe(self) -> dict[str, Any]: ...


class HostMemorySource:
    """Host RAM through psutil: the CPU pipeline's memory."""

    kind = VramSource.HOST

    def __init__(
        self,
        *,
        cap: int | None = None,
        worker_pid: int | None = None,
        accounting: CapAccounting = CapAccounting.ADDRESS_SPACE,
    ) -> None:
        self.device = "cpu"
        self.cap = cap
        self.accounting = accounting
        self._worker: psutil.Process | None = None
        self.set_worker(worker_pid)

    def set_worker(self, pid: int | None) -> None:
        self._worker = None
        if pid is not None:
            try:
                self._worker = psutil.Process(pid)
            except psutil.NoSuchProcess:
                self._worker = None

    def _worker_usage(self) -> tuple[int | None, int | None]:
        """(rss, counted against the cap) of the worker, or (None, None) when there is none."""
        if self._worker is None:
            return None, None
        try:
            info = self._worker.memory_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            self._worker = None
            return None, None
        counted = info.vms if self.accounting is CapAccounting.ADDRESS_SPACE else info.rss
        return int(info.rss), int(counted)

    def sample(self) -> MemoryReading:
        vm = psutil.virtual_memory()
        rss, counted = self._worker_usage()
        reading = MemoryReading(
            source=self.kind,
            device=self.device,
            device_name="host RAM",
            total=int(vm.total),
            used=int(vm.total - vm.available),
            free=int(vm.available),
            process_used=rss,
            processes=()
            if self._worker is None or rss is None
            else (ProcessMemory(self._worker.pid, rss),),
        )
        return _apply_cap(reading, self.cap, counted)

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.kind.value,
            "device": self.device,
            "cap": self.cap,
            "cap_accounting": self.accounting.value,
        }


class NvmlSource:
    """One NVIDIA device through pynvml (package nvidia-ml-py). Open with `NvmlSource.open`."""

    kind = VramSource.NVML

    def __init__(self, nvml: Any, handle: Any, index: int, name: str, cap: int | None) -> None:
        self._nvml = nvml
        self._handle = handle
        self.index = index
        self.device = f"cuda:{index}"
        self.device_name = name
        self.cap = cap
        self._worker_pid: int | None = None

    @classmethod
    def open(cls, index: int = 0, *, cap: int | None = None, nvml: Any = None) -> NvmlSource:
        """Initialise NVML and bind device ``index``; `nvml` replaces the pynvml module (tests
        inject a named fake, since this machine has no NVIDIA GPU)."""
        if nvml is None:
            try:
                nvml = importlib.import_module("pynvml")
            except ImportError as exc:
                raise MemorySourceUnavailable(source="nvml", reason=f"pynvml: {exc}") from exc
        try:
            nvml.nvmlInit()
            count = int(nvml.nvmlDeviceGetCount())
            if index >= count:
                raise MemorySourceUnavailable(
                    source="nvml", reason=f"device {index} requested, {count} NVIDIA GPU(s) found"
                )
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = nvml.nvmlDeviceGetName(handle)
        except nvml.NVMLError as exc:
            # Typical: NVML Shared Library Not Found, Driver Not Loaded, No permission.
            raise MemorySourceUnavailable(source="nvml", reason=str(exc)) from exc
        name = name.decode() if isinstance(name, bytes) else str(name)
        return cls(nvml, handle, index, name, cap)

    def set_worker(self, pid: int | None) -> None:
        self._worker_pid = pid

    def _optional(self, fn_name: str) -> Any:
        """Call an NVML query that some devices or drivers do not support; None then."""
        fn = getattr(self._nvml, fn_name, None)
        if fn is None:
            return None
        try:
            return fn(self._handle)
        except self._nvml.NVMLError:
            return None

    def sample(self) -> MemoryReading:
        try:
            mem = self._nvml.nvmlDeviceGetMemoryInfo(self._handle)
        except self._nvml.NVMLError as exc:
            raise MemorySourceUnavailable(source="nvml", reason=str(exc)) from exc
        processes = tuple(
            ProcessMemory(int(p.pid), int(p.usedGpuMemory or 0))
            for p in (self._optional("nvmlDeviceGetComputeRunningProcesses") or ())
        )
        own = next((p.used for p in processes if p.pid == self._worker_pid), None)
        util = self._optional("nvmlDeviceGetUtilizationRates")
        reasons = self._optional("nvmlDeviceGetCurrentClocksEventReasons")
        if reasons is None:
            reasons = self._optional("nvmlDeviceGetCurrentClocksThrottleReasons")
        reading = MemoryReading(
            source=self.kind,
            device=self.device,
            device_name=self.device_name,
            total=int(mem.total),
            used=int(mem.used),
            free=int(mem.free),
            process_used=own,
            processes=processes,
            utilization_pct=None if util is None else int(util.gpu),
            throttle_reasons=tuple(
                name for bit, name in _THROTTLE_BITS.items() if reasons and int(reasons) & bit
            ),
        )
        return _apply_cap(reading, self.cap, own)

    def describe(self) -> dict[str, Any]:
        return {
            "source": self.kind.value,
            "device": self.device,
            "device_name": self.device_name,
            "cap": self.cap,
        }


@dataclass
class FakeScriptedSource:
    """A FAKE memory source for tests: replays `readings` in order, then repeats the last one.
    It stands in for a GPU this machine does not have; it is never selected in production."""

    readings: Sequence[MemoryReading]
    kind: VramSource = VramSource.HOST
    device: str = "cpu"
    samples_taken: int = 0
    worker_pid: int | None = field(default=None)

    def __post_init__(self) -> None:
        if not self.readings:
            raise ValueError("FakeScriptedSource needs at least one reading")
        self.kind = self.readings[0].source
        self.device = self.readings[0].device

    def set_worker(self, pid: int | None) -> None:
        self.worker_pid = pid

    def sample(self) -> MemoryReading:
        reading = self.readings[min(self.samples_taken, len(self.readings) - 1)]
        self.samples_taken += 1
        return reading

    @property
    def exhausted(self) -> bool:
        return self.samples_taken >= len(self.readings)

    def describe(self) -> dict[str, Any]:
        return {"source": "scripted-fake", "device": self.device}


@dataclass(frozen=True, slots=True)
class SourceChoice:
    source: MemorySource
    # Why NVML is not used (None when it is): shown by the monitor.
    nvml_unavailable: str | None
    # Set only when a GPU was expected and is not usable: a degraded reason for the supervisor.
    degraded_reason: str | None


def select_source(
    device: str,
    *,
    cap: int | None = None,
    expect_gpu: bool = False,
    worker_pid: int | None = None,
    nvml: Any = None,
) -> SourceChoice:
    """NVML for ``cuda[:N]`` and ``auto`` when it works, else the host. Never raises for a
    missing GPU: that is reported in the choice.

    Invariant: a ``cpu`` device is always read from the host, GPU or not (its jobs are budgeted
    from host memory); NVML is only asked, when a GPU is expected, whether one can be read."""
    if device == "cpu":
        host = HostMemorySource(cap=cap, worker_pid=worker_pid)
        if not expect_gpu:
            return SourceChoice(host, None, None)
        try:
            NvmlSource.open(0, nvml=nvml)
        except MemorySourceUnavailable as exc:
            reason = f"an NVIDIA GPU was expected but cannot be read: {exc.reason}"
            return SourceChoice(host, exc.reason, reason)
        return SourceChoice(host, "the device is the CPU", None)
    index = int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0
    try:
        source: MemorySource = NvmlSource.open(index, cap=cap, nvml=nvml)
    except MemorySourceUnavailable as exc:
        degraded = (
            f"an NVIDIA GPU was expected but cannot be read: {exc.reason}" if expect_gpu else None
        )
        host = HostMemorySource(cap=cap, worker_pid=worker_pid)
        return SourceChoice(host, exc.reason, degraded)
    source.set_worker(worker_pid)
    return SourceChoice(source, None, None)
