"""Fallback: when a model can not be made available (or can not fit), the registry's fallback
chain names what to run instead; the first usable one is offered, with the reason, so that the
supervisor runs degraded and the job result names the model actually used."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from actors.models.registry import ModelRegistry

__all__ = ["FallbackOffer", "find_fallback"]


@dataclass(frozen=True, slots=True)
class FallbackOffer:
    requested: str
    model: str
    reason: str


def find_fallback(
    registry: ModelRegistry, name: str, reason: str, usable: Callable[[str], bool]
) -> FallbackOffer | None:
    """Walk `name`'s fallback chain (cycles end it) and offer the first usable model."""
    seen = {name}
    current = registry.get(name).fallback
    while current is not None and current not in seen:
        if usable(current):
            return FallbackOffer(requested=name, model=current, reason=reason)
        seen.add(current)
        current = registry.get(current).fallback
    return None
