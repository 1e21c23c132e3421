"""Placement by fit: which device runs a job, and why, in words.

With several devices (the `devices` setting) every job is placed before it starts. Each device
in service is described by what pre-flight predicts for this job there (a `Plan` with the rungs
it needs, a `Refusal` with the numbers, or None when no estimate is known yet), how many jobs it
holds (running and placed), and the model its worker has loaded. The rules, in order:

1. fewest changes to what was asked: a device where the job runs as asked beats one where it
   needs tiling; a change of the output (fewer frames, a lower resolution) counts before any
   number of changes that keep it;
2. a device whose worker already holds the job's model and is idle (no load to pay);
3. the shortest queue;
4. a known estimate before an unknown one, then the order of the `devices` setting.

A job that fits no device goes to the one closest to fitting (the smallest shortfall), where it
walks the ladder as it does on one device. A device out of service (its worker halted) is never
chosen; with none in service there is no placement.

Invariant: pure. A function of its inputs: no clock, no I/O, nothing mutated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from supervisor.recovery.preflight import Plan, Refusal, format_bytes

__all__ = ["DeviceView", "Placement", "describe_fit", "place"]

# Short words for the rungs in a placement reason ("cpu:0 would need tiling").
_RUNG_WORDS = {
    "vae_tiling": "tiling",
    "layerwise_fp8": "fp8 storage",
    "model_offload": "model offload",
    "group_offload": "group offload",
    "sequential_offload": "sequential offload",
    "fewer_frames": "fewer frames",
    "lower_resolution": "a lower resolution",
    "fewer_steps": "fewer steps",
}


@dataclass(frozen=True, slots=True)
class DeviceView:
    """One device as placement sees it, for one job."""

    device: str  # the label of the `devices` setting: "cpu:1", "cuda:0"
    fit: Plan | Refusal | None = None  # pre-flight for this job here (None: no estimate yet)
    in_service: bool = True  # False: its worker halted (an operator's reset brings it back)
    queue: int = 0  # jobs running or placed on it
    loaded_model: str | None = None  # the model its worker holds (None: none yet)
    busy: bool = False  # running a job now


@dataclass(frozen=True, slots=True)
class Placement:
    device: str
    reason: str  # "placed on cpu:1: fits without changes; cpu:0 would need tiling"
    fits: bool  # False: it fits no device; it walks the ladder on this one


def describe_fit(fit: Plan | Refusal | None) -> str:
    """What pre-flight says about one device, in words."""
    if fit is None:
        return "no estimate yet (runs as asked)"
    if isinstance(fit, Refusal):
        return (
            f"does not fit (needs ~{format_bytes(fit.needed)}, "
            f"{format_bytes(fit.available)} available)"
        )
    if not fit.changes:
        return "fits without changes"
    words = [_RUNG_WORDS.get(c.rung.value, c.rung.value.replace("_", " ")) for c in fit.changes]
    return "would need " + " and ".join(words)


def _changes(fit: Plan | Refusal | None) -> tuple[int, int]:
    """(changes of the output, changes in all) a fitting device needs."""
    if not isinstance(fit, Plan):
        return 0, 0
    return sum(1 for c in fit.changes if c.changes_output), len(fit.changes)


def _warm(view: DeviceView, model: str) -> bool:
    return view.loaded_model == model and not view.busy


def _fit_key(view: DeviceView, model: str, index: int) -> tuple[int, int, int, int, int, int]:
    output, changes = _changes(view.fit)
    return (
        output,
        changes,
        0 if _warm(view, model) else 1,
        view.queue,
        0 if view.fit is not None else 1,
        index,
    )


def _shortfall(fit: Plan | Refusal | None) -> int:
    return max(0, fit.needed - fit.available) if isinstance(fit, Refusal) else 0


def place(model: str, devices: Sequence[DeviceView]) -> Placement | None:
    """The device a job of `model` runs on and why (see the module's docstring); None when no
    device is in service."""
    serving = [(i, d) for i, d in enumerate(devices) if d.in_service]
    if not serving:
        return None
    fitting = [(i, d) for i, d in serving if not isinstance(d.fit, Refusal)]
    if fitting:
        _, chosen = min(fitting, key=lambda p: _fit_key(p[1], model, p[0]))
        fits = True
    else:
        _, chosen = min(serving, key=lambda p: (_shortfall(p[1].fit), p[1].queue, p[0]))
        fits = False
    return Placement(chosen.device, _reason(chosen, devices, model, fits=fits), fits)


def _reason(chosen: DeviceView, devices: Sequence[DeviceView], model: str, *, fits: bool) -> str:
    own = describe_fit(chosen.fit)
    if not fits:
        own += ", the closest to fitting: the ladder is walked there"
    same = [
        d
        for d in devices
        if d is not chosen
        and d.in_service
        and not isinstance(d.fit, Refusal)
        and _changes(d.fit) == _changes(chosen.fit)
    ]
    if fits and same:
        if _warm(chosen, model) and not all(_warm(d, model) for d in same):
            own += f", {model} already loaded and idle"
        elif chosen.queue < min(d.queue for d in same):
            own += f", shortest queue ({chosen.queue})"
    others = [f"{d.device} {_other(d, same, model)}" for d in devices if d is not chosen]
    return "; ".join([f"placed on {chosen.device}: {own}", *others])


def _other(view: DeviceView, same: Sequence[DeviceView], model: str) -> str:
    if not view.in_service:
        return "is out of service"
    words = describe_fit(view.fit)
    if any(view is d for d in same):
        state = "busy" if view.busy else f"{view.queue} queued"
        if view.loaded_model != model:
            state += f", {model} not loaded"
        words += f" but {state}"
    return words
