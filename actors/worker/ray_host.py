"""Node side of `executor = "ray"`: the body of the Ray actor that hosts one worker process.

    WorkerHost(launch, token)  # in a Ray actor pinned to one GPU (or one CPU) on some node

The actor starts the same worker process a local server starts (`python -m actors.worker
--channel-fd N`, one end of a socketpair), listens on its node's address for one TCP
connection from the control process, and copies bytes between the two: the control process
speaks the worker protocol it always speaks, only over TCP. The first 32 bytes of a connection
must be the token the control process gave the actor; any other connection is closed unread.

Invariants:
- The worker lives no longer than its actor: it holds the only other end of its channel, so
  the actor's death (`ray.kill`, a lost node, the driver gone) is an EOF to it, and a worker at
  EOF exits at once (see `actors.worker.main`). No Ray restart brings a worker back behind the
  supervisor's back: the actor is created with `max_restarts=0`.
- The control process learns of a death in two ways that agree: its TCP stream ends, and
  `wait_exit` answers (the worker's code) or fails (the actor is gone).

This module imports neither torch nor ray: the actor's process is a plain Python process until
the worker subprocess imports torch.
"""

from __future__ import annotations

import dataclasses
import hmac
import os
import signal
import socket
import subprocess
import sys
import threading

from actors.worker.spawn import WorkerLaunch

__all__ = ["TOKEN_BYTES", "WorkerHost", "node_device"]

TOKEN_BYTES = 32
_CHUNK = 1 << 16


def node_device(device: str) -> str:
    """The device a worker names inside its actor: Ray shows an actor only the GPU it was
    given (CUDA_VISIBLE_DEVICES), so every GPU slot is `cuda:0` there."""
    return "cuda:0" if device.startswith("cuda") else "cpu"


class WorkerHost:
    """One worker process and the relay between its channel and the control process."""

    def __init__(self, launch: WorkerLaunch, token: bytes) -> None:
        self._token = token
        launch = dataclasses.replace(
            launch, python=sys.executable, device=node_device(launch.device)
        )
        self._log_path = launch.log_path
        self._worker_end, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        launch.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **launch.env, "PYTHONUNBUFFERED": "1"}
        try:
            with launch.log_path.open("ab") as log:
                self._process = subprocess.Popen(
                    launch.command(child.fileno()),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    pass_fds=(child.fileno(),),
                    env=env,
                    start_new_session=True,
                )
        finally:
            child.close()
        self._address = _node_address()
        self._listener = socket.create_server((self._address, 0))
        self._exited = threading.Event()
        threading.Thread(target=self._serve, name="ray-host.accept", daemon=True).start()
        threading.Thread(target=self._reap, name="ray-host.reap", daemon=True).start()

    # -- called by the control process through Ray --------------------------------------------

    def endpoint(self) -> tuple[str, int, int]:
        """(address, port, worker pid) to connect to."""
        return self._address, self._listener.getsockname()[1], self._process.pid

    def wait_exit(self) -> int:
        """Blocks until the worker exits; its exit code (negative: the signal)."""
        return self._process.wait()

    def send_signal(self, signum: int) -> None:
        if self._process.poll() is None:
            self._process.send_signal(signal.Signals(signum))

    def log_tail(self, size: int = 2000) -> str:
        try:
            with self._log_path.open("rb") as handle:
                handle.seek(max(0, self._log_path.stat().st_size - size))
                return handle.read().decode(errors="replace")
        except OSError:
            return ""

    # -- threads --------------------------------------------------------------------------

    def _serve(self) -> None:
        # Invariant: exactly one connection, the one that presents the token, is ever relayed.
        while not self._exited.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            conn.settimeout(10.0)
            try:
                presented = _read_exactly(conn, TOKEN_BYTES)
            except OSError:
                presented = b""
            if not hmac.compare_digest(presented, self._token):
                conn.close()
                continue
            conn.settimeout(None)
            self._listener.close()
            self._relay(conn)
            return

    def _relay(self, conn: socket.socket) -> None:
        down = threading.Thread(
            target=_copy, args=(conn, self._worker_end), name="ray-host.to-worker", daemon=True
        )
        down.start()
        _copy(self._worker_end, conn)

    def _reap(self) -> None:
        self._process.wait()
        self._exited.set()
        # The worker's output is all in the socket buffer by now; closing the listener stops
        # a control process that never connected from waiting on a worker that is gone.
        self._listener.close()


def _copy(source: socket.socket, sink: socket.socket) -> None:
    """Bytes from `source` to `sink` until either side ends; then ends both directions."""
    try:
        while chunk := source.recv(_CHUNK):
            sink.sendall(chunk)
    except OSError:
        pass
    for sock in (source, sink):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _read_exactly(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _node_address() -> str:
    # Ray's own idea of this node's address is the one other nodes reach it by.
    import ray.util

    return str(ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]
