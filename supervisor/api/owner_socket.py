"""The owner's Unix socket, where the follower processes of a multi-process host forward to.

Invariants: the socket is bound only by the process that holds the data folder's lock, so a
socket file found there by a new owner is a dead owner's and is replaced; it is readable and
writable by this user only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import tempfile
from collections.abc import Generator
from pathlib import Path
from typing import Any

import uvicorn

__all__ = ["SOCKET_GRACE_S", "SOCKET_NAME", "bind_owner_socket", "owner_server", "socket_path"]

SOCKET_NAME = "genvisor.sock"
# Followers' WebSockets and slow downloads get this long to finish when the owner stops.
SOCKET_GRACE_S = 5
_SUN_PATH_MAX = 107


def socket_path(home: Path) -> Path:
    """GENVISOR_HOME/genvisor.sock, or, where that path is too long for a Unix socket (107
    bytes), a name in the temporary folder derived from the home's absolute path."""
    home = Path(os.path.abspath(home))
    path = home / SOCKET_NAME
    if len(os.fsencode(path)) <= _SUN_PATH_MAX:
        return path
    digest = hashlib.sha256(os.fsencode(home)).hexdigest()[:20]
    return Path(tempfile.gettempdir()) / f"genvisor-{os.getuid()}-{digest}.sock"


def bind_owner_socket(path: Path) -> socket.socket:
    """A listening socket at `path` (call only while holding the data folder's lock)."""
    path.unlink(missing_ok=True)  # a dead owner's
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


class _SocketServer(uvicorn.Server):
    """uvicorn on the owner's socket inside the host's event loop: the host's server keeps
    the signals (this one is stopped by `should_exit`)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def owner_server(app: Any) -> uvicorn.Server:
    """A server of the host's `app` for the followers (its lifespan is the host's own)."""
    config = uvicorn.Config(
        app,
        lifespan="off",
        log_config=None,
        access_log=False,
        ws="websockets-sansio",
        # The follower says who the client is and how it connected.
        proxy_headers=True,
        forwarded_allow_ips="*",
        timeout_graceful_shutdown=SOCKET_GRACE_S,
    )
    return _SocketServer(config)
