"""Follow a running server's event bus over its WebSocket, from a seq, without losing events.

Invariants: every event is yielded at most once and in seq order (events with a seq not above
the last one yielded are skipped); a stream that drops, or a `bus.lagged` notice, is answered by
reconnecting with ``since=<last seq yielded>`` so that the journal replays what was missed; a
server that stays unreachable for `reconnect_window_s` raises `ServerUnavailable`.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from supervisor.cli.server_client import server_url, token_headers
from supervisor.core.exceptions import ServerUnavailable

__all__ = ["EventFollower", "StreamRefused", "ws_url"]

LAGGED = "bus.lagged"
GAP = "bus.gap"


class StreamRefused(ServerUnavailable):
    """The server answered but refused the event stream (token or Origin)."""


def ws_url(args: argparse.Namespace, since: int | None) -> str:
    base = server_url(args)
    scheme, _, rest = base.partition("://")
    ws_scheme = "wss" if scheme == "https" else "ws"
    query = f"?since={since}" if since is not None else ""
    return f"{ws_scheme}://{rest}/v1/events{query}"


@dataclass
class EventFollower:
    """Iterate over the server's events with ``seq > since`` (replay, then live).

    `on_reconnect` is told (with the seq it resumes from) each time the stream is re-opened, so
    a command can tell the person. A silent dead connection is found by the client's keepalive
    pings (websockets' defaults); `recv_timeout_s` additionally bounds one read when set.
    """

    args: argparse.Namespace
    since: int | None = None
    reconnect_window_s: float = 30.0
    recv_timeout_s: float | None = None
    on_reconnect: Callable[[int | None, str], None] | None = None
    reconnects: int = 0
    last_seq: int | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.last_seq = self.since
        self._ws: ClientConnection | None = None

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
            self._ws = None

    def _open(self) -> ClientConnection:
        url = ws_url(self.args, self.last_seq)
        # A server that is not there at the start is a mistake to report at once; one that
        # went away mid-stream may be restarting, and is given the reconnect window.
        window = self.reconnect_window_s if self.reconnects else 0.0
        deadline = time.monotonic() + window
        delay = 0.1
        while True:
            try:
                return connect(
                    url,
                    additional_headers=token_headers(),
                    open_timeout=10,
                    # Leaving with unread frames queued, the client cannot read the server's
                    # close frame (reading is paused behind them): do not wait long for it.
                    close_timeout=0.5,
                    max_size=2**22,
                )
            except InvalidStatus as exc:
                raise StreamRefused(
                    url=server_url(self.args),
                    reason=f"the event stream was refused with HTTP "
                    f"{exc.response.status_code}; check GENVISOR_API_TOKEN",
                ) from None
            # ConnectionClosed: reset during the handshake, by a server dying or still starting
            # (seen: a kill -9 then a restart on the same port, the first try reset).
            except (OSError, InvalidHandshake, TimeoutError, ConnectionClosed) as exc:
                if time.monotonic() + delay > deadline:
                    raise ServerUnavailable(
                        url=server_url(self.args), reason=type(exc).__name__
                    ) from None
                # A reconnect back-off for a person's terminal, not a test synchronisation.
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            yield from self._follow()
        finally:
            self.close()

    def _follow(self) -> Iterator[dict[str, Any]]:
        while True:
            with self._open() as ws:
                self._ws = ws
                yield from self._read(ws)

    def _read(self, ws: ClientConnection) -> Iterator[dict[str, Any]]:
        """The events of one connection; returns when it must be re-opened."""
        while True:
            try:
                frame = ws.recv(timeout=self.recv_timeout_s)
            except (ConnectionClosed, TimeoutError, OSError) as exc:
                self._reopen(type(exc).__name__)
                return
            event: dict[str, Any] = json.loads(frame)
            if event.get("type") == LAGGED:
                # Events were dropped for this subscriber: the journal still has them.
                self._reopen(f"lagged ({event['data'].get('dropped')} events dropped)")
                return
            seq = event.get("seq")
            if event.get("type") == GAP and event["data"].get("reason") == "ahead":
                # The server numbers below what this client saw (its journal was replaced):
                # follow its numbering from here, or every new event would look old.
                self.last_seq = seq if isinstance(seq, int) else self.last_seq
                yield event
                continue
            if isinstance(seq, int):
                if self.last_seq is not None and seq <= self.last_seq:
                    continue
                self.last_seq = seq
            yield event

    def _reopen(self, why: str) -> None:
        self.close()
        self.reconnects += 1
        if self.on_reconnect is not None:
            self.on_reconnect(self.last_seq, why)
