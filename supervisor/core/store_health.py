"""What a store found when it opened a damaged SQLite file, and what it did about it.

Shared by every durable store (jobs, event journal, learned strategies, calibration). A damaged
file is never deleted: it is moved aside with a timestamp and what could be read from it is
carried into a fresh file; the report says where the damaged copy lies and how much survived,
so the runtime can serve DEGRADED with a reason a person can act on.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

log = logging.getLogger("genvisor.stores")

__all__ = ["StoreCorrupted", "StoreHealReport", "tolerate"]


@dataclass(frozen=True)
class StoreHealReport:
    # What people call the store: "jobs" reads "the jobs database was damaged".
    store: str
    path: Path
    moved_to: Path
    recovered: int
    # None when the damaged file no longer says how many rows it held.
    lost: int | None
    # What the check found (SQLite's own words, first line).
    detail: str
    # The rows in plain words ("jobs", "events", "learned strategies").
    items: str = "rows"

    def reason(self) -> str:
        """One sentence for people, e.g. "the jobs database was damaged; moved to
        /home/u/.genvisor/jobs.sqlite3.damaged-20261129T221500; 58 of 60 jobs recovered"."""
        if self.lost is not None:
            counted = f"{self.recovered} of {self.recovered + self.lost} {self.items} recovered"
        elif self.recovered:
            counted = f"{self.recovered} {self.items} recovered (how many were lost is not known)"
        else:
            counted = f"no {self.items} could be recovered"
        return f"the {self.store} database was damaged; moved to {self.moved_to}; {counted}"


class StoreCorrupted(sqlite3.DatabaseError):
    """A store's SQLite file failed with a corruption error while the server ran.

    A subclass of `sqlite3.DatabaseError`, so the categorizer's rule for that class (by the
    words "malformed" / "not a database", which `detail` carries) gives `STORE.CORRUPTED`; the
    message ends with "file path: ..." so the catalog can name the file. The store heals at the
    next start (see `StoreHealReport`)."""

    def __init__(self, *, store: str, path: Path, detail: str) -> None:
        self.store = store
        self.path = path
        self.detail = detail
        super().__init__(f"the {store} database is damaged: {detail}; file path: {path}")


def tolerate(call: Callable[[], T], default: T, *, what: str) -> T:
    """`call()` on a store of knowledge (learned strategies, calibration), or `default` when
    its file is damaged: a job goes on without what was learned rather than fail for it. The
    store keeps the damage (`damage`), /readyz names it, and the next start heals the file."""
    try:
        return call()
    except StoreCorrupted as exc:
        log.warning("%s skipped: %s", what, exc)
        return default
