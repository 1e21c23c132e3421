"""Restart intensity and backoff: pure functions of `now`, testable without an event loop."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from supervisor.supervision.child_spec import ChildSpec, RestartType

__all__ = [
    "ExitKind",
    "RestartDecision",
    "backoff_delay",
    "decide_restart",
    "restarts_in_window",
]


class ExitKind(StrEnum):
    NORMAL = "normal"  # the child returned
    ABNORMAL = "abnormal"  # it raised, or its process died


@dataclass(frozen=True, slots=True)
class RestartDecision:
    """`restart` with `delay_s`, or not; `escalate` when the intensity is exceeded."""

    restart: bool
    escalate: bool
    delay_s: float
    restarts_in_window: int
    # The restart times to keep: those still inside the window, plus this one when restarting.
    history: tuple[float, ...]
    reason: str


def restarts_in_window(history: Sequence[float], now: float, period_s: float) -> tuple[float, ...]:
    """The restart times that still count at `now` (strictly inside the sliding period)."""
    return tuple(t for t in history if now - t < period_s)


def backoff_delay(attempt: int, spec: ChildSpec, rng: random.Random | None = None) -> float:
    """Exponential delay for the `attempt`-th restart in the window (1-based), capped, jittered."""
    base = min(spec.backoff_max_s, spec.backoff_base_s * (2.0 ** max(0, attempt - 1)))
    if spec.jitter and base > 0:
        draw = (rng or random).uniform(-spec.jitter, spec.jitter)
        return max(0.0, base * (1 + draw))
    return base


def decide_restart(
    spec: ChildSpec,
    history: Sequence[float],
    now: float,
    exit_kind: ExitKind,
    rng: random.Random | None = None,
) -> RestartDecision:
    """What the supervisor does when `spec`'s child exits at `now`.

    Invariant: at most `spec.max_restarts` restarts within any window of `spec.period_s`; the one
    after that escalates (the supervisor halts) instead of restarting.
    """
    recent = restarts_in_window(history, now, spec.period_s)
    wants_restart = spec.restart is RestartType.PERMANENT or (
        spec.restart is RestartType.TRANSIENT and exit_kind is ExitKind.ABNORMAL
    )
    if not wants_restart:
        return RestartDecision(
            restart=False,
            escalate=False,
            delay_s=0.0,
            restarts_in_window=len(recent),
            history=recent,
            reason=f"{spec.restart.value} child exited {exit_kind.value}ly: not restarted",
        )
    if len(recent) >= spec.max_restarts:
        return RestartDecision(
            restart=False,
            escalate=True,
            delay_s=0.0,
            restarts_in_window=len(recent),
            history=recent,
            reason=(
                f"{spec.id} exited {len(recent) + 1} times within {spec.period_s:g} s "
                f"(limit {spec.max_restarts} restarts)"
            ),
        )
    attempt = len(recent) + 1
    return RestartDecision(
        restart=True,
        escalate=False,
        delay_s=backoff_delay(attempt, spec, rng),
        restarts_in_window=attempt,
        history=(*recent, now),
        reason=f"restart {attempt} of {spec.max_restarts} within {spec.period_s:g} s",
    )
