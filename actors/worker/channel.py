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
from anyio.abc import ByteStream
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
        self._send_lock = anyio.Lock()

    @classmethod
    async def from_socket(cls, sock: socket.socket, *, pid: int | None = None) -> AsyncChannel:
        from anyio.abc import UNIXSocketStream

        stream = await UNIXSocketStream.from_socket(sock)
        return cls(stream, pid=pid)

    async def send(self, msg: BaseModel) -> None:
        data = encode_message(msg)
        async with self._send_lock:
            await self._stream.send(_HEADER.pack(len(data)) + data)

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
    """Worker side, over the inherited socket. `send` is thread-safe."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(True)
        self._sock = sock
        self._lock = threading.Lock()

    @classmethod
    def from_fd(cls, fd: int) -> BlockingChannel:
        return cls(socket.socket(fileno=fd))

    def send(self, msg: BaseModel) -> None:
        data = encode_message(msg)
        with self._lock:
            self._sock.sendall(_HEADER.pack(len(data)) + data)

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
