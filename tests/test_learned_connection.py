"""Learned strategies keep one SQLite connection, opened after the file is checked and healed,
instead of a new connection per call (a few per job, on the event loop)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from supervisor.recovery.ladder import RungId
from supervisor.recovery.learned_strategies import LearnedStrategies, StrategyKey

GiB = 1024**3


def _open_descriptors(path: Path) -> int:
    """How many of this process's file descriptors are open on `path` (Linux /proc)."""
    count = 0
    for fd in Path("/proc/self/fd").iterdir():
        try:
            count += os.readlink(fd) == str(path)
        except OSError:
            continue  # closed while listing
    return count


def test_every_call_goes_through_one_connection_until_close(tmp_path: Path) -> None:
    path = tmp_path / "vram.sqlite3"
    store = LearnedStrategies(path)
    assert _open_descriptors(path) == 1  # open between calls: not one per call
    for width in range(64, 64 + 40 * 16, 16):
        key = StrategyKey.for_job(
            model="tiny-wan",
            device="cpu",
            cap=None,
            total=8 * GiB,
            width=width,
            height=480,
            frames=17,
        )
        store.remember(key, RungId.VAE_TILING)
        found = store.lookup(key)
        assert found is not None
        assert found.rung is RungId.VAE_TILING
    assert _open_descriptors(path) == 1
    assert len(store.all()) >= 1
    store.close()
    assert _open_descriptors(path) == 0
    with pytest.raises(sqlite3.ProgrammingError):
        store.all()


def test_a_damaged_file_is_still_healed_at_open(tmp_path: Path) -> None:
    path = tmp_path / "vram.sqlite3"
    path.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4096)  # a header, then garbage
    store = LearnedStrategies(path)
    assert store.heal_report is not None
    key = StrategyKey.for_job(
        model="tiny-wan", device="cpu", cap=None, total=8 * GiB, width=64, height=64, frames=5
    )
    store.remember(key, RungId.VAE_TILING)
    assert store.lookup(key) is not None
    store.close()
