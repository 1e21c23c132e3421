"""A small SQLite store that keeps one connection for its life (learned strategies, memory
calibration): thread-safe by a lock, healed at open, corruption turned into `StoreCorrupted`.

The jobs store and the event journal have their own, larger faces; these two share a file
(`vram.sqlite3`) and this one shape: a table, a few statements, called from the event loop's
thread and from worker threads, one transaction at a time.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from supervisor.core.sqlite_salvage import SalvageSpec, corruption_guard, open_healed
from supervisor.core.store_health import StoreCorrupted, StoreHealReport

__all__ = ["OneConnectionStore"]


class OneConnectionStore:
    """`spec`: the table and how it is salvaged; `pragmas`: run at open, before the schema."""

    def __init__(self, path: Path, spec: SalvageSpec, *, pragmas: Sequence[str] = ()) -> None:
        self.path = path
        self._spec = spec
        self._pragmas = tuple(pragmas)
        # The first corruption met while running; the file heals at the next start.
        self.damage: StoreCorrupted | None = None
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # Set when the file was damaged at open. The file may hold other stores' tables: those
        # rows are carried as well.
        self.heal_report: StoreHealReport | None
        self._db, self.heal_report = open_healed(path, spec, self._create)

    def _create(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=5.0, check_same_thread=False)
        try:
            for pragma in self._pragmas:
                db.execute(pragma)
            with db:
                db.execute(self._spec.schema)
        except BaseException:
            db.close()  # open_healed moves a damaged file aside: nothing may hold it open
            raise
        return db

    def close(self) -> None:
        """Close the connection (idempotent); later calls raise sqlite3.ProgrammingError."""
        with self._lock:
            self._db.close()

    def _seen(self, damage: StoreCorrupted) -> None:
        if self.damage is None:
            self.damage = damage

    @contextmanager
    def _session(self) -> Iterator[sqlite3.Connection]:
        """The connection in a transaction; corruption becomes StoreCorrupted."""
        with corruption_guard(self._spec.store, self.path, self._seen), self._lock, self._db:
            yield self._db
