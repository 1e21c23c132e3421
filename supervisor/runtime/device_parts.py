"""What each device of the runtime is made of: its resolved device, its memory accounting (the
worker's cap, its baseline, the weights it reads) and its pre-flight and ladder.

With one device (`devices = "auto"`, the default) there is one set of parts, on the device
`device` resolves to, capped by `device_memory_limit`: exactly what the runtime always had. With
a `devices` list there is one per device, each with its own cap (`device_memory_limit` for all,
or one per device) and its own learned-strategy key (the cap is part of it). The calibration
store is shared: calibration is per model and device kind, not per worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from actors.vram.device import ResolvedDevice, resolve_device
from actors.worker.memory_cap import parse_size
from supervisor.core.settings import Settings
from supervisor.recovery.calibration import CalibrationStore
from supervisor.recovery.ladder import load_ladder
from supervisor.recovery.learned_strategies import LearnedStrategies
from supervisor.recovery.memory import MemoryRecovery
from supervisor.recovery.memory_accounting import MemoryAccounting
from supervisor.supervision.lanes import GENERATOR, lane_child_id, torch_device

__all__ = ["DeviceParts", "build_device_parts"]


@dataclass(frozen=True, slots=True)
class DeviceParts:
    label: str  # "cpu:1" in a devices list; the resolved device ("cpu", "cuda:0") with one
    child_id: str  # its generator child: "generator", or "generator:cpu:1"
    resolved: ResolvedDevice
    memory_limit: str  # the worker's cap as set ("" for none)
    accounting: MemoryAccounting
    memory: MemoryRecovery

    @property
    def device(self) -> str:
        """What the worker runs on ("cpu", "cuda:1")."""
        return self.resolved.device

    @property
    def monitor_id(self) -> str:
        """The VRAM monitor child of a GPU after the first ("vram_monitor:cuda:1"); every CPU
        worker shares the host's memory, sampled by the first device's monitor."""
        return f"vram_monitor:{self.label}"

    @property
    def log_name(self) -> str:
        """The worker's log file ("worker.log"; "worker-cpu-1.log" in a devices list)."""
        if self.child_id == GENERATOR:
            return "worker.log"
        return f"worker-{self.label.replace(':', '-')}.log"


def _parts(
    settings: Settings,
    *,
    label: str | None,
    resolved: ResolvedDevice,
    strategies: LearnedStrategies,
    calibration: CalibrationStore,
) -> DeviceParts:
    limit = settings.device_memory_limit if label is None else settings.memory_limit_for(label)
    accounting = MemoryAccounting(
        device=resolved.device,
        cap=parse_size(limit) if limit else None,
        calibration=calibration,
    )
    memory = MemoryRecovery(
        load_ladder(),
        strategies,
        device=resolved.device,
        device_name=resolved.name,
        max_attempts=settings.max_recovery_attempts,
        memory_key=accounting.key,
        budget=accounting.budget,
        estimate=accounting.estimate,
        reserve=int(settings.memory_reserve),
        calibrate=accounting.calibrate,
    )
    return DeviceParts(
        label=label or resolved.device,
        child_id=GENERATOR if label is None else lane_child_id(label),
        resolved=resolved,
        memory_limit=limit,
        accounting=accounting,
        memory=memory,
    )


def build_device_parts(
    settings: Settings,
    *,
    strategies: LearnedStrategies,
    calibration: CalibrationStore,
    nvml: Any = None,
) -> tuple[DeviceParts, ...]:
    """One set of parts per device; "auto" is decided here, once: every actor gets the resolved
    device, never the setting (a CPU job budgeted from a GPU's memory otherwise)."""
    timeout = settings.vram_sample_deadline
    labels = settings.device_list()
    if labels is None:
        resolved = resolve_device(settings.device, nvml=nvml, timeout=timeout)
        return (
            _parts(
                settings,
                label=None,
                resolved=resolved,
                strategies=strategies,
                calibration=calibration,
            ),
        )
    return tuple(
        _parts(
            settings,
            label=label,
            resolved=resolve_device(torch_device(label), nvml=nvml, timeout=timeout),
            strategies=strategies,
            calibration=calibration,
        )
        for label in labels
    )
