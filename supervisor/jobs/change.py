"""What genvisor changed about a job to make it run: one typed record per change.

A change is made by pre-flight (before the first attempt), by a learned strategy, or by recovery
after a failure (a memory rung, a model repair, a fallback model). The job keeps them in order;
results, events and the API show them as JSON (`as_dict`), and people read `text`.

Invariant: a change planned for the next attempt has ``attempt == job.attempts + 1`` until that
attempt starts; `Job.planned` is the one place that reads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = ["FALLBACK_MODEL", "REPAIR_MODEL", "Change", "ChangeOrigin"]

# The rung ids of the two model changes (ladder rungs have their own ids: RungId).
REPAIR_MODEL = "repair_model"
FALLBACK_MODEL = "fallback_model"


class ChangeOrigin(StrEnum):
    PREFLIGHT = "preflight"  # the estimate said the job would not fit as asked
    LEARNED = "learned"  # a similar job needed it before on this machine
    RECOVERY = "recovery"  # after a real failure of this job


@dataclass(frozen=True, slots=True)
class Change:
    rung: str
    text: str  # the sentence for people: what was done and why
    origin: ChangeOrigin
    attempt: int  # the attempt it applies to (1 = the first run)
    action: str | None = None  # the recovery action's name (suggestions skip what was done)
    changes_output: bool = False  # the video differs from what was asked
    decode_only: bool = False  # the kept latents are decoded again; no new generation
    fresh_worker: bool = False  # the attempt runs in a new worker process
    before: Mapping[str, Any] = field(default_factory=dict)
    after: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rung": self.rung,
            "text": self.text,
            "origin": self.origin.value,
            "attempt": self.attempt,
            "action": self.action,
            "changes_output": self.changes_output,
            "decode_only": self.decode_only,
            "fresh_worker": self.fresh_worker,
            "before": dict(self.before),
            "after": dict(self.after),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Change:
        """Read a stored change, including rows written before changes were typed (their
        sentence was in "description", sometimes longer than "text")."""
        return cls(
            rung=str(data["rung"]),
            text=str(data.get("description") or data.get("text") or ""),
            origin=ChangeOrigin(data.get("origin") or ChangeOrigin.RECOVERY),
            attempt=int(data.get("attempt") or 1),
            action=data.get("action"),
            changes_output=bool(data.get("changes_output")),
            decode_only=bool(data.get("decode_only")),
            fresh_worker=bool(data.get("fresh_worker")),
            before=dict(data.get("before") or {}),
            after=dict(data.get("after") or {}),
        )
