"""Memory pressure levels with hysteresis (pure).

A level goes up as soon as the used fraction reaches its threshold, and comes down only when the
fraction falls below the threshold minus `margin`. So a reading that hovers around a threshold
does not flap between two levels (and does not flood the bus with `vram.pressure` events).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from supervisor.bus.events import PressureLevel, VramPressure

__all__ = ["PressureThresholds", "PressureTracker", "next_level"]


@dataclass(frozen=True, slots=True)
class PressureThresholds:
    warning: float = 0.85
    critical: float = 0.95
    margin: float = 0.05

    def __post_init__(self) -> None:
        if not 0 < self.warning < self.critical <= 1:
            raise ValueError(f"need 0 < warning ({self.warning}) < critical ({self.critical}) <= 1")
        if not 0 <= self.margin < self.warning:
            raise ValueError(f"margin {self.margin} must be in [0, warning)")


def next_level(
    current: PressureLevel, used_fraction: float, thresholds: PressureThresholds
) -> PressureLevel:
    """The level after observing `used_fraction` while at `current`."""
    t = thresholds
    if used_fraction >= t.critical:
        return PressureLevel.CRITICAL
    if current is PressureLevel.CRITICAL and used_fraction >= t.critical - t.margin:
        return PressureLevel.CRITICAL
    if used_fraction >= t.warning:
        return PressureLevel.WARNING
    if current is not PressureLevel.NORMAL and used_fraction >= t.warning - t.margin:
        return PressureLevel.WARNING
    return PressureLevel.NORMAL


@dataclass(slots=True)
class PressureTracker:
    """The level of each device; `observe` returns an event only when a level changes."""

    thresholds: PressureThresholds = field(default_factory=PressureThresholds)
    levels: dict[str, PressureLevel] = field(default_factory=dict)

    def level(self, device: str) -> PressureLevel:
        return self.levels.get(device, PressureLevel.NORMAL)

    def observe(self, device: str, used_fraction: float) -> VramPressure | None:
        previous = self.level(device)
        level = next_level(previous, used_fraction, self.thresholds)
        self.levels[device] = level
        if level is previous:
            return None
        return VramPressure(device=device, level=level, previous=previous)
