"""One failure through the taxonomy: category and code, then the message a person reads."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from supervisor.errors import (
    Categorization,
    CategorizationContext,
    ErrorReport,
    default_categorizer,
    explain,
)

__all__ = ["Diagnosis", "diagnose"]


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """What the failure pipeline concluded about one failure, in plain data."""

    code: str
    category: str
    recoverable: bool
    poisons_context: bool
    user_error: dict[str, Any]  # the UserError as JSON


def diagnose(
    report: ErrorReport,
    *,
    applied: Sequence[str] = (),
    facts: dict[str, object] | None = None,
    verdict: Categorization | None = None,
) -> Diagnosis:
    """Categorize (unless `verdict` is already known, as for a pre-flight refusal) and explain."""
    if verdict is None:
        verdict = default_categorizer().categorize(
            report, CategorizationContext.from_report(report)
        )
    user_error = explain(report, verdict, facts=facts or {}, applied=applied)
    return Diagnosis(
        code=verdict.code.value,
        category=verdict.category.value,
        recoverable=verdict.recoverable,
        poisons_context=verdict.poisons_context,
        user_error=user_error.model_dump(mode="json"),
    )
