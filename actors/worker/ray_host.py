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
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable

from actors.worker.channel import MAX_FRAME_BYTES
from actors.worker.node_models import NodeModels
from actors.worker.protocol import Failed, Load, decode_control, encode_message
from actors.worker.spawn import WorkerLaunch, log_tail
from supervisor.errors.report import ErrorReport, Stage

__all__ = ["TOKEN_BYTES", "WorkerHost", "node_device"]

TOKEN_BYTES = 32
_HEADER = struct.Struct(">I")


def node_device(device: str) -> str:
    """The device a worker names inside its actor: Ray shows an actor only the GPU it was
    given (CUDA_VISIBLE_DEVICES), so every GPU slot is `cuda:0` there."""
    return "cuda:0" if device.startswith("cuda") else "cpu"


class WorkerHost:
    """One worker process and the relay between its channel and the control process."""

    def __init__(
        self, launch: WorkerLaunch, token: bytes, node_models: NodeModels | None = None
    ) -> None:
        self._token = token
        self._node_models = node_models
        launch = dataclasses.replace(
            launch, python=sys.executable, device=node_device(launch.device)
        )
        self._log_path = launch.log_path
        self._worker_end, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        launch.log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with launch.log_path.open("ab") as log:
                self._process = subprocess.Popen(
                    launch.command(child.fileno()),
                    stdout=log,
                    **launch.process_options(child.fileno()),
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

    def log_tail(self) -> str:
        return log_tail(self._log_path)

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
        # Invariant: frames are copied whole, and every write to the control side holds
        # `to_control`: a `Failed` this actor writes itself never lands inside a worker frame.
        to_control = threading.Lock()
        down = threading.Thread(
            target=self._to_worker,
            args=(conn, self._worker_end, to_control),
            name="ray-host.to-worker",
            daemon=True,
        )
        down.start()
        _copy_frames(self._worker_end, conn, to_control, lambda frame: frame)

    def _to_worker(
        self, conn: socket.socket, worker: socket.socket, to_control: threading.Lock
    ) -> None:
        """Frames from the control side to the worker; with `node_models`, a `Load` gets this
        node's path of its model.

        Invariant (the worker's own, see `actors.worker.main`): the control side sends Load
        then Generate without waiting; a Load that fails here is answered with one `Failed`
        and the Generate that follows it is dropped, so the job fails once."""
        drop_generate = False

        def localize(frame: bytes) -> bytes | None:
            nonlocal drop_generate
            if self._node_models is None:
                return frame
            msg = decode_control(frame)
            if isinstance(msg, Load):
                try:
                    local = self._node_models.localize(msg.model_name, msg.model_path)
                except Exception as exc:
                    report = ErrorReport.from_exception(
                        exc,
                        stage=Stage.LOAD,
                        device=msg.options.device,
                        context={"model": msg.model_name},
                    )
                    _send_frame(
                        conn, to_control, encode_message(Failed(job_id=None, report=report))
                    )
                    drop_generate = True
                    return None
                drop_generate = False
                return encode_message(msg.model_copy(update={"model_path": local}))
            if msg.kind == "generate" and drop_generate:
                drop_generate = False
                return None
            return frame

        _copy_frames(conn, worker, threading.Lock(), localize)

    def _reap(self) -> None:
        self._process.wait()
        self._exited.set()
        # The worker's output is all in the socket buffer by now; closing the listener stops
        # a control process that never connected from waiting on a worker that is gone.
        self._listener.close()


def _copy_frames(
    source: socket.socket,
    sink: socket.socket,
    lock: threading.Lock,
    transform: Callable[[bytes], bytes | None],
) -> None:
    """Frames from `source` to `sink` (each through `transform`; None drops it) until either
    side ends or a frame is malformed; then ends both directions of both."""
    try:
        while header := _read_exactly(source, _HEADER.size):
            (length,) = _HEADER.unpack(header)
            if len(header) < _HEADER.size or length > MAX_FRAME_BYTES:
                break
            frame = _read_exactly(source, length)
            if len(frame) < length:
                break
            out = transform(frame)
            if out is not None:
                _send_frame(sink, lock, out)
    except (OSError, ValueError):
        pass
    for sock in (source, sink):
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _send_frame(sink: socket.socket, lock: threading.Lock, frame: bytes) -> None:
    with lock:
        sink.sendall(_HEADER.pack(len(frame)) + frame)


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
