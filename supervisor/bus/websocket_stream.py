"""Stream the bus to one WebSocket client: replay from ``since``, then live, one JSON text frame
per event (the envelope ``{seq, ts, type, data}``), ``bus.lagged`` notices included.

The caller checks authentication and Origin before calling; this function accepts the socket.
A slow client is a slow subscriber: its frames wait in the socket while its bus buffer drops
the oldest events and announces them, so it never holds up the publisher or other clients.
The stream ends when the client disconnects (or sends a close frame) or the bus closes; in
the latter case the server closes the socket with 1001 (going away).
"""

from __future__ import annotations

import re

import anyio
import anyio.abc
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from supervisor.bus.event_bus import EventBus

__all__ = [
    "GOING_AWAY",
    "MAX_SINCE",
    "POLICY_VIOLATION",
    "close_explaining",
    "parse_since",
    "stream_events",
]

GOING_AWAY = 1001
POLICY_VIOLATION = 1008
# SQLite integers are 64-bit: a larger seq would fail in the journal query, not be refused.
MAX_SINCE = 2**62
_WHOLE = re.compile(r"[0-9]{1,19}")
# RFC 6455: a close frame's reason is at most 123 bytes of UTF-8.
_MAX_REASON_BYTES = 123


def parse_since(raw: str | None) -> int | None:
    """The ``?since=`` of a subscription: None (live only) or a whole number 0..MAX_SINCE.
    Raises ValueError with what is allowed and the value given ("must be ..., got 'abc'")."""
    if raw is None:
        return None
    if _WHOLE.fullmatch(raw) and int(raw) <= MAX_SINCE:
        return int(raw)
    raise ValueError(f"must be a whole number from 0 to 2**62, got {raw[:40]!r}")


async def close_explaining(websocket: WebSocket, reason: str) -> None:
    """Accept `websocket` only to close it at once with 1008 and `reason`, for a request that is
    allowed (Origin and token checked) but malformed: the close reason is what every client,
    browsers included, can read and print, where a refusal before accepting is a bare 403
    that reads like an Origin or token refusal. Nothing is streamed.

    (Not an HTTP denial response: browsers can not read its body, and uvicorn's
    websockets-sansio protocol logs a spurious "returned without completing handshake" error
    after each one.)"""
    await websocket.accept()
    short = reason.encode("utf-8", "backslashreplace")[:_MAX_REASON_BYTES]
    await websocket.close(code=POLICY_VIOLATION, reason=short.decode("utf-8", "ignore"))


async def _watch_disconnect(
    websocket: WebSocket, scope: anyio.CancelScope, left: anyio.Event
) -> None:
    # Reading is the only way to learn of a disconnect while no event is being sent. Frames
    # the client sends are ignored: the stream is one-way.
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass
    left.set()
    scope.cancel()


async def stream_events(
    websocket: WebSocket, bus: EventBus, since: int | None, subprotocol: str | None = None
) -> None:
    """Accept ``websocket`` (selecting `subprotocol`, when given) and send it the events with
    ``seq > since`` then every live event, until the client leaves or the bus closes."""
    await websocket.accept(subprotocol=subprotocol)
    left = anyio.Event()
    client_left = False
    if not bus.closed:
        async with bus.subscribe(since=since) as subscription, anyio.create_task_group() as tg:
            tg.start_soon(_watch_disconnect, websocket, tg.cancel_scope, left)
            async for event in subscription:
                try:
                    await websocket.send_text(event.to_json())
                except (WebSocketDisconnect, OSError):
                    client_left = True
                    break
            tg.cancel_scope.cancel()
    client_left = client_left or left.is_set()
    if not client_left and websocket.application_state == WebSocketState.CONNECTED:
        try:
            await websocket.close(code=GOING_AWAY)
        except (WebSocketDisconnect, RuntimeError, OSError):
            pass
