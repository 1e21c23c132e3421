"""Stream the bus to one WebSocket client: replay from ``since``, then live, one JSON text frame
per event (the envelope ``{seq, ts, type, data}``), ``bus.lagged`` notices included.

The caller checks authentication and Origin before calling; this function accepts the socket.
A slow client is a slow subscriber: its frames wait in the socket while its bus buffer drops
the oldest events and announces them, so it never holds up the publisher or other clients.
The stream ends when the client disconnects (or sends a close frame) or the bus closes; in
the latter case the server closes the socket with 1001 (going away).
"""

from __future__ import annotations

import anyio
import anyio.abc
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from supervisor.bus.event_bus import EventBus

__all__ = ["GOING_AWAY", "stream_events"]

GOING_AWAY = 1001


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


async def stream_events(websocket: WebSocket, bus: EventBus, since: int | None) -> None:
    """Accept ``websocket`` and send it the events with ``seq > since`` then every live event,
    until the client leaves or the bus closes."""
    await websocket.accept()
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
