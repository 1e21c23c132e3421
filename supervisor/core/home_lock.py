"""One owner per data folder: an OS lock on `GENVISOR_HOME/genvisor.lock`.

A server takes it before it opens any store or starts any worker; a second instance finds it
held and stops at once, naming the owner (pid, URL, since when) from the lock file's body.

Invariants:
- the lock is `flock` on an open file description, so the kernel releases it when the owner's
  process dies in any way (kill -9 included): a stale lock file never blocks a restart;
- the file is never deleted (deleting it would let a second process lock a new inode while
  the first still holds the old one); its body is only a description for people.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from supervisor.core.exceptions import HomeInUse

__all__ = ["LOCK_NAME", "HomeLock", "LockOwner", "read_owner"]

LOCK_NAME = "genvisor.lock"


@dataclass(frozen=True, slots=True)
class LockOwner:
    pid: int | None
    url: str | None
    since: float | None


def read_owner(home: Path) -> LockOwner:
    """Who the lock file says holds the folder (best effort: the body may be half written)."""
    try:
        body = json.loads((home / LOCK_NAME).read_text() or "{}")
    except (OSError, ValueError):
        body = {}
    if not isinstance(body, dict):
        body = {}
    pid, url, since = body.get("pid"), body.get("url"), body.get("since")
    return LockOwner(
        pid=pid if isinstance(pid, int) else None,
        url=url if isinstance(url, str) else None,
        since=float(since) if isinstance(since, int | float) else None,
    )


class HomeLock:
    """The exclusive lock on one data folder, held from `acquire` until `release` (or exit)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.path = home / LOCK_NAME
        # A raw descriptor, not a file object: a runtime dropped without `release` keeps the
        # lock until its process ends, with no ResourceWarning from a collected file.
        self._fd: int | None = None
        self._since = 0.0

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, *, url: str | None = None) -> None:
        """Take the lock or raise `HomeInUse` at once (never waits)."""
        if self._fd is not None:
            return
        self.home.mkdir(parents=True, exist_ok=True)
        # O_CREAT without O_TRUNC: the owner's description stays readable until this process
        # holds the lock.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            owner = read_owner(self.home)
            raise HomeInUse(
                home=str(self.home), pid=owner.pid, url=owner.url, since=owner.since
            ) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._since = time.time()
        self.describe(url=url)

    def describe(self, *, url: str | None) -> None:
        """Rewrite the body that a refused second instance shows (e.g. once the port is known)."""
        if self._fd is None:
            return
        body = json.dumps({"pid": os.getpid(), "url": url, "since": self._since}).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, body, 0)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            # Closing the descriptor releases the flock; the file stays (see Invariants).
            os.close(fd)
