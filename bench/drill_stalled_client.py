"""A WebSocket client that stops reading: a raw socket with a tiny receive buffer that does the
opening handshake, then reads nothing until told to drain. Written by hand (RFC 6455 framing)
so that no library reads ahead in a background thread and hides the stall from the server."""

from __future__ import annotations

import base64
import json
import os
import socket
import struct
import time
from typing import Any

__all__ = ["StalledClient"]


class StalledClient:
    def __init__(self, port: int, since: int, rcvbuf: int = 4096, *, stall: bool = True) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Set before connect so the advertised window stays small.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if stall:
            # A small segment size keeps the server's send buffer (sized by the kernel from
            # segment size and congestion window) small, as on a slow link: otherwise loopback
            # lets the kernel soak up megabytes and the server never sees the stall.
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET /v1/events?since={since} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.sock.sendall(request.encode())
        self._buf = b""
        while b"\r\n\r\n" not in self._buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("closed during the WebSocket handshake")
            self._buf += chunk
        head, _, self._buf = self._buf.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"handshake refused: {head[:200]!r}")

    def _read(self, n: int, deadline: float) -> bytes:
        while len(self._buf) < n:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("closed by the server")
            self._buf += chunk
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def drain(self, quiet: float = 1.5) -> list[dict[str, Any]]:
        """Read frames until the server has sent nothing for `quiet` seconds."""
        events: list[dict[str, Any]] = []
        while True:
            try:
                deadline = time.monotonic() + quiet
                b0, b1 = self._read(2, deadline)
                length = b1 & 0x7F
                if length == 126:
                    (length,) = struct.unpack("!H", self._read(2, deadline))
                elif length == 127:
                    (length,) = struct.unpack("!Q", self._read(8, deadline))
                payload = self._read(length, deadline + 10)
            except (TimeoutError, ConnectionError):
                return events
            opcode = b0 & 0x0F
            if opcode == 0x1:
                events.append(json.loads(payload))
            elif opcode == 0x8:
                return events

    def close(self) -> None:
        self.sock.close()
