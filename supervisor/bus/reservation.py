"""The durable reservation of event numbers: the highest seq the bus may hand out.

It lives in a small file of its own beside the journal (``events.sqlite3.seq``), not in the
SQLite file: a reservation must not wait for a flush transaction to finish (a batch of
thousands of rows holds SQLite's write lock for milliseconds, and publishing outran the
reserver whenever it waited there), and it must survive damage to the journal file, which is
what makes a healed journal resume after every number it ever handed out.

Format: two slots of ``magic, generation, value, crc32`` in two separate 512-byte sectors. A
write goes to the slot the newest valid one is not in, then fsync: a write torn by a crash
leaves the other slot intact, holding the previous value, which is right, since the bus uses
no number of a reservation before `write` returns. Reading takes the valid slot with the
highest generation.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from pathlib import Path

__all__ = ["ReservationFile"]

_SLOT = struct.Struct(">4sQQ")
_MAGIC = b"GVSQ"
_SECTOR = 512


class ReservationFile:
    """Read at open, then `write` (fsync'd) each time the reservation changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        fresh = not path.exists()
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if fresh:
            # The file's directory entry must survive a power loss as well as its contents.
            os.fsync(self._fd)
            directory = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        self._generation, self.value = self._read()

    def _read(self) -> tuple[int, int | None]:
        best: tuple[int, int | None] = (0, None)
        for slot in range(2):
            raw = os.pread(self._fd, _SLOT.size + 4, slot * _SECTOR)
            if len(raw) < _SLOT.size + 4:
                continue
            body, crc = raw[: _SLOT.size], struct.unpack(">I", raw[_SLOT.size :])[0]
            magic, generation, value = _SLOT.unpack(body)
            if magic == _MAGIC and zlib.crc32(body) == crc and generation > best[0]:
                best = (generation, value)
        return best

    def write(self, value: int) -> None:
        """Make ``value`` the reservation; durable when this returns."""
        with self._lock:
            generation = self._generation + 1
            body = _SLOT.pack(_MAGIC, generation, value)
            record = body + struct.pack(">I", zlib.crc32(body))
            os.pwrite(self._fd, record, (generation % 2) * _SECTOR)
            os.fsync(self._fd)
            self._generation, self.value = generation, value

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
