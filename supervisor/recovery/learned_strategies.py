"""Learned strategies: the ladder rung that worked, per (model, device, memory, size bucket).

The next pre-flight of a similar request starts at that rung, so the same request does not run
out of memory twice. Stored in SQLite (one small table), written on every success after a
recovery. The size bucket groups requests by work size (width x height x frames) in half-octave
steps, so 832x480x17 and 848x480x17 share a strategy and 1280x720x81 does not.

A damaged file is healed at open (supervisor/core/sqlite_salvage.py: moved aside, readable rows
carried, `heal_report` set); a corruption error later becomes `StoreCorrupted`, kept in `damage`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from supervisor.core.sqlite_connection import OneConnectionStore
from supervisor.core.sqlite_salvage import SalvageSpec
from supervisor.recovery.ladder import RungId

__all__ = ["LearnedStrategies", "LearnedStrategy", "StrategyKey", "memory_key", "size_bucket"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS learned_strategies (
    model TEXT NOT NULL,
    device TEXT NOT NULL,
    memory_mib INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    rung TEXT NOT NULL,
    successes INTEGER NOT NULL DEFAULT 1,
    updated_at REAL NOT NULL,
    PRIMARY KEY (model, device, memory_mib, bucket)
)
"""
_SALVAGE = SalvageSpec(
    store="learned strategies",
    items="learned strategies",
    schema=_SCHEMA,
    table="learned_strategies",
    check_row=lambda row: RungId(str(row["rung"])),  # a garbled rung is not carried
)


def size_bucket(width: int, height: int, frames: int) -> int:
    """Half-octave bucket of the work size: floor(2 x log2(width x height x frames))."""
    return math.floor(2 * math.log2(max(1, width * height * frames)))


def memory_key(cap: int | None, total: int) -> int:
    """The memory a strategy was learned under, in MiB: the cap when one is set, else the
    device's total."""
    return (cap if cap is not None else total) // (1024 * 1024)


@dataclass(frozen=True, slots=True)
class StrategyKey:
    model: str
    device: str  # device kind and name, e.g. "cpu" or "cuda:NVIDIA H200"
    memory_mib: int
    bucket: int

    @classmethod
    def for_job(
        cls,
        *,
        model: str,
        device: str,
        cap: int | None,
        total: int,
        width: int,
        height: int,
        frames: int,
    ) -> StrategyKey:
        return cls(model, device, memory_key(cap, total), size_bucket(width, height, frames))


@dataclass(frozen=True, slots=True)
class LearnedStrategy:
    key: StrategyKey
    rung: RungId
    successes: int
    updated_at: float


class LearnedStrategies(OneConnectionStore):
    """The table in its SQLite file, through one connection opened once (after healing).

    Invariant: every use of the connection holds `_lock` (the connection is shared by the
    event loop's thread and any worker thread a caller uses), one transaction at a time."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, _SALVAGE)

    def remember(self, key: StrategyKey, rung: RungId) -> None:
        """Store the rung that worked; a different rung for the same key replaces it."""
        with self._session() as db:
            db.execute(
                """
                INSERT INTO learned_strategies
                    (model, device, memory_mib, bucket, rung, successes, updated_at)
                VALUES (?, ?, ?, ?, ?, 1, ?)
                ON CONFLICT (model, device, memory_mib, bucket) DO UPDATE SET
                    successes = CASE WHEN rung = excluded.rung THEN successes + 1 ELSE 1 END,
                    rung = excluded.rung,
                    updated_at = excluded.updated_at
                """,
                (key.model, key.device, key.memory_mib, key.bucket, rung.value, time.time()),
            )

    def lookup(self, key: StrategyKey) -> LearnedStrategy | None:
        with self._session() as db:
            row = db.execute(
                "SELECT rung, successes, updated_at FROM learned_strategies "
                "WHERE model = ? AND device = ? AND memory_mib = ? AND bucket = ?",
                (key.model, key.device, key.memory_mib, key.bucket),
            ).fetchone()
        if row is None:
            return None
        return LearnedStrategy(key, RungId(row[0]), int(row[1]), float(row[2]))

    def all(self) -> list[LearnedStrategy]:
        with self._session() as db:
            rows = db.execute(
                "SELECT model, device, memory_mib, bucket, rung, successes, updated_at "
                "FROM learned_strategies ORDER BY model, device, memory_mib, bucket"
            ).fetchall()
        return [
            LearnedStrategy(
                StrategyKey(r[0], r[1], int(r[2]), int(r[3])), RungId(r[4]), int(r[5]), float(r[6])
            )
            for r in rows
        ]

    def forget(self, key: StrategyKey) -> bool:
        """Drop one strategy (e.g. it ran out of memory anyway); True if one was stored."""
        with self._session() as db:
            cursor = db.execute(
                "DELETE FROM learned_strategies "
                "WHERE model = ? AND device = ? AND memory_mib = ? AND bucket = ?",
                (key.model, key.device, key.memory_mib, key.bucket),
            )
            return cursor.rowcount > 0

    def clear(self) -> int:
        """Forget everything (setting `clear_learned_strategies`); returns how many."""
        with self._session() as db:
            return db.execute("DELETE FROM learned_strategies").rowcount
