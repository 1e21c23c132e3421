"""The drill's results: one row per fault, the table, and the closing line."""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import httpx
from drill_env import DrillError, say

__all__ = ["FaultResult", "print_table", "run_fault", "summary_line"]


@dataclass
class FaultResult:
    fault: str
    expected: str
    observed: str = ""
    survived: bool = False
    recovery_s: float | None = None
    jobs_accepted: int = 0
    jobs_lost: int = 0
    # Not reproducible on this machine: reported, not counted as a survived fault.
    reproducible: bool = True
    events_unannounced: int = 0
    notes: list[str] = field(default_factory=list)

    def fail(self, why: str) -> None:
        self.survived = False
        self.notes.append(why)


def run_fault(result: FaultResult, body: Callable[[FaultResult], None]) -> FaultResult:
    """Run one fault; an exception is a fault genvisor did not survive (or the drill broke)."""
    say(f"fault: {result.fault}")
    began = time.monotonic()
    try:
        body(result)
    except (DrillError, AssertionError, OSError, ValueError, KeyError, httpx.HTTPError) as exc:
        result.fail(f"{type(exc).__name__}: {exc}")
        traceback.print_exc(file=sys.stderr)
    say(f"  -> {'survived' if result.survived else 'NOT survived'} in "
        f"{time.monotonic() - began:.1f}s: {result.observed} {result.notes}")  # fmt: skip
    return result


def _cell(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "~"


def print_table(results: list[FaultResult]) -> None:
    header = ("fault", "expected", "observed", "recovery", "lost", "ok")
    widths = (34, 44, 70, 9, 4, 4)
    rows = [header]
    for r in results:
        ok = "yes" if r.survived else ("n/a" if not r.reproducible else "NO")
        rec = f"{r.recovery_s:.1f}s" if r.recovery_s is not None else "-"
        observed = r.observed + (" | " + "; ".join(r.notes) if r.notes else "")
        rows.append((r.fault, r.expected, observed, rec, str(r.jobs_lost), ok))
    for row in rows:
        print("  ".join(_cell(c, w).ljust(w) for c, w in zip(row, widths, strict=True)))
    # The full text of every row, unclipped, for whoever reads the log.
    for r in results:
        print("#", json.dumps(asdict(r)), file=sys.stderr)


def summary_line(results: list[FaultResult]) -> tuple[str, bool]:
    counted = [r for r in results if r.reproducible]
    survived = sum(r.survived for r in counted)
    lost = sum(r.jobs_lost for r in results)
    unannounced = sum(r.events_unannounced for r in results)
    ok = survived == len(counted) and lost == 0 and unannounced == 0
    line = (
        f"drill: {len(counted)} faults, {survived} survived, {lost} jobs lost, "
        f"{unannounced} events lost unannounced"
    )
    return line, ok
