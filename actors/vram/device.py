"""What the `device` setting means on this host, decided once at start.

``auto`` is the first NVIDIA GPU NVML can read (``cuda:0``), else the CPU; ``cuda`` is
``cuda:0``. The result goes to every actor (worker, VRAM monitor, pre-flight), so a job is never
run on one device and budgeted from another's memory. Its `name` is the device's real name (the
GPU's NVML name, the host CPU's model): learned strategies are keyed by it, so what was learned
on one GPU model is not applied to another.

Invariant: NVML is asked in a thread with a deadline, so a wedged driver delays start-up by at
most `timeout` and the device is then decided as if there were no GPU (``auto``) or kept as set.
"""

from __future__ import annotations

import platform
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.vram.memory_sources import NvmlSource
from supervisor.core.exceptions import MemorySourceUnavailable

__all__ = ["ResolvedDevice", "host_cpu_name", "resolve_device"]


@dataclass(frozen=True, slots=True)
class ResolvedDevice:
    device: str  # "cpu" or "cuda:N": what every actor and the worker are given
    name: str  # the real name: "NVIDIA GeForce RTX 4080", the host CPU's model, or "cpu"
    why: str  # how it was decided, in words (the state dump)

    @property
    def kind(self) -> str:
        return self.device.split(":", 1)[0]

    @property
    def strategy_device(self) -> str:
        """The device part of a learned strategy's key: ``cuda:NVIDIA H200``, ``cpu:<model>``."""
        return f"{self.kind}:{self.name}"


def host_cpu_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The host CPU's model (Linux ``model name``, else the platform's), or ``cpu``."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _gpu_name(index: int, nvml: Any, timeout: float) -> str:
    """The NVML name of GPU `index`; raises MemorySourceUnavailable (also when NVML does not
    answer within `timeout`: the thread is left to the driver, never joined again)."""
    found: list[str | BaseException] = []

    def probe() -> None:
        try:
            found.append(NvmlSource.open(index, nvml=nvml).device_name)
        except BaseException as exc:  # handed to the caller below
            found.append(exc)

    thread = threading.Thread(target=probe, name="genvisor-nvml-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    if not found:
        raise MemorySourceUnavailable(source="nvml", reason=f"no answer within {timeout:g} s")
    if isinstance(found[0], BaseException):
        raise found[0]
    return found[0]


def resolve_device(setting: str, *, nvml: Any = None, timeout: float = 5.0) -> ResolvedDevice:
    """Decide `setting` (``auto``, ``cpu``, ``cuda``, ``cuda:N``); `nvml` replaces the pynvml
    module (tests inject a named fake)."""
    if setting == "cpu":
        return ResolvedDevice("cpu", host_cpu_name(), "set to cpu")
    device = "cuda:0" if setting in ("auto", "cuda") else setting
    try:
        name = _gpu_name(int(device.split(":", 1)[1]), nvml, timeout)
    except MemorySourceUnavailable as exc:
        if setting == "auto":
            why = f"auto: no NVIDIA GPU can be read ({exc.reason}), so the CPU"
            return ResolvedDevice("cpu", host_cpu_name(), why)
        # Set explicitly: kept (the worker says whether it can use it); named by its id.
        return ResolvedDevice(
            device, device, f"set to {setting}; NVML cannot name it: {exc.reason}"
        )
    return ResolvedDevice(device, name, f"{setting}: {name} found through NVML")
