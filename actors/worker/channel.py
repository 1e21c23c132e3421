"""Length-prefixed JSON frames on the dedicated worker channel (one end of a socketpair).

A frame is a 4-byte big-endian length, then that many bytes of JSON (see `protocol`). The
channel is never stdout: libraries print there. Two sides:

- `AsyncChannel` (control process): anyio, over the parent end of the socketpair.
- `BlockingChannel` (worker process): plain sockets; sends are serialised with a lock because
  the heartbeat thread and the job thread both write.

Invariant: this module imports no torch — the control process imports it.
"""

from __future__ import annotations

import socket
import struct
import threading

import anyio
from anyio.abc import ByteStream, SocketAttribute
from pydantic import BaseModel

from actors.worker.protocol import (
    ControlMessage,
    WorkerMessage,
    decode_control,
    decode_worker,
    encode_message,
)
from supervisor.core.exceptions import ProtocolError

__all__ = ["MAX_FRAME_BYTES", "AsyncChannel", "BlockingChannel", "ChannelClosed"]

_HEADER = struct.Struct(">I")
# Large results travel as files; a frame holds at most an error report with its traceback.
MAX_FRAME_BYTES = 4 * 1024 * 1024


class ChannelClosed(ProtocolError):
    """The other end closed the channel (the worker died, or the control process went away)."""

    def __init__(self, *, pid: int | None) -> None:
        super().__init__(pid=pid, detail="channel closed by the other end")


def _check_length(length: int, pid: int | None) -> None:
    if length > MAX_FRAME_BYTES:
        raise ProtocolError(pid=pid, detail=f"frame of {length} bytes exceeds {MAX_FRAME_BYTES}")


class AsyncChannel:
    """Control side. One reader task and any number of senders (sends are locked)."""

    def __init__(self, stream: ByteStream, *, pid: int | None = None) -> None:
        self._stream = stream
        self._pid = pid
        self._buffer = bytearray()
        # Uncontended, taken without a turn of the loop: a send is on the path of every job.
        self._send_lock = anyio.Lock(fast_acquire=True)
        raw = stream.extra(SocketAttribute.raw_socket, None)
        # The stream's own non-blocking socket, written directly when it has room (see `send`).
        # Only a real socket: uvloop's transports hand out a stand-in whose send() raises
        # TypeError (a TCP channel to a Ray actor, for one).
        usable = isinstance(raw, socket.socket) and raw.gettimeout() == 0.0
        self._raw = raw if usable else None

    @classmethod
    async def from_socket(cls, sock: socket.socket, *, pid: int | None = None) -> AsyncChannel:
        from anyio.abc import UNIXSocketStream

        stream = await UNIXSocketStream.from_socket(sock)
        return cls(stream, pid=pid)

    async def send(self, msg: BaseModel) -> None:
        data = encode_message(msg)
        frame = memoryview(_HEADER.pack(len(data)) + data)
        async with self._send_lock:
            # A frame is small and the socket's buffer is mostly empty: written at once, without
            # the stream's turn of the loop, so the worker gets a job before the loop runs every
            # other ready task. The rest (a full buffer), and every error, goes through the
            # stream, which waits for room and raises its own errors. Invariant: all writes hold
            # the send lock, so a frame is never split by another.
            if self._raw is not None:
                try:
                    frame = frame[self._raw.send(frame) :]
                except OSError:
                    pass
            if frame:
                await self._stream.send(bytes(frame))

    async def _read_exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            try:
                chunk = await self._stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                raise ChannelClosed(pid=self._pid) from None
            self._buffer.extend(chunk)
        out = bytes(self._buffer[:size])
        del self._buffer[:size]
        return out

    async def receive_frame(self) -> bytes:
        (length,) = _HEADER.unpack(await self._read_exactly(_HEADER.size))
        _check_length(length, self._pid)
        return await self._read_exactly(length)

    async def receive(self) -> WorkerMessage:
        return decode_worker(await self.receive_frame(), pid=self._pid)

    async def aclose(self) -> None:
        await self._stream.aclose()


class BlockingChannel:
    """Worker side, over the inherited socket. `send` and `send_with_next` are thread-safe."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(True)
        self._sock = sock
        self._lock = threading.Lock()
        # Frames that travel with the next `send` (see `send_with_next`), in order.
        self._held: list[bytes] = []

    @classmethod
    def from_fd(cls, fd: int) -> BlockingChannel:
        return cls(socket.socket(fileno=fd))

    def send(self, msg: BaseModel) -> None:
        data = encode_message(msg)
        frame = _HEADER.pack(len(data)) + data
        with self._lock:
            if self._held:
                frame = b"".join(self._held) + frame
                self._held.clear()
            self._sock.sendall(frame)

    def send_with_next(self, msg: BaseModel) -> None:
        """`send`, for a frame no one waits for (a stage's timing): it goes out in one write
        with the next frame sent, whichever thread sends it, so the control process wakes once
        for both. Invariant: frames keep their order, and a held frame waits at most until the
        next heartbeat (every job also ends with an outcome frame right after its last timing).
        """
        data = encode_message(msg)
        with self._lock:
            self._held.append(_HEADER.pack(len(data)) + data)

    def _read_exactly(self, size: int) -> bytes:
        parts: list[bytes] = []
        left = size
        while left:
            chunk = self._sock.recv(min(left, 1 << 20))
            if not chunk:
                raise ChannelClosed(pid=None)
            parts.append(chunk)
            left -= len(chunk)
        return b"".join(parts)

    def receive(self) -> ControlMessage:
        (length,) = _HEADER.unpack(self._read_exactly(_HEADER.size))
        _check_length(length, None)
        return decode_control(self._read_exactly(length))

    def close(self) -> None:
        self._sock.close()
