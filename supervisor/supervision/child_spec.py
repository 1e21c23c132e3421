"""Child specifications in the style of OTP's supervisor.

Defaults follow OTP: `permanent` restart, shutdown 5 s; intensity is per child here (OTP puts it
on the supervisor), because the worker process and an idle monitor deserve different budgets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from actors.actor import Actor

__all__ = ["ChildSpec", "RestartType"]


class RestartType(StrEnum):
    PERMANENT = "permanent"  # always restarted
    TRANSIENT = "transient"  # restarted only after an abnormal exit
    TEMPORARY = "temporary"  # never restarted


@dataclass(frozen=True, slots=True)
class ChildSpec:
    id: str
    start: Callable[[], Actor]
    restart: RestartType = RestartType.PERMANENT
    max_restarts: int = 3
    period_s: float = 5.0
    backoff_base_s: float = 0.1
    backoff_max_s: float = 10.0
    # Fraction of the delay drawn at random, up and down, so that siblings do not restart in step.
    jitter: float = 0.2
    shutdown_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {self.max_restarts}")
        if self.period_s <= 0:
            raise ValueError(f"period_s must be > 0, got {self.period_s}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter}")
