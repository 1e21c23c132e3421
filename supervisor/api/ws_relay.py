"""The WebSocket half of forwarding: a client's socket relayed to the owner's over its Unix
socket, frame by frame, both ways; the owner's close (code and reason) reaches the client, and
an owner that vanished closes it with 1012 (service restart: resume with ?since=)."""

from __future__ import annotations

import contextlib
from typing import cast

import anyio
from fastapi import Response
from starlette.websockets import WebSocket
from websockets.asyncio.client import ClientConnection, unix_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

__all__ = ["OWNER_GONE", "connect_owner", "denial", "relay"]

OWNER_GONE = 1012
# Made afresh by the relay's own handshake (the Host from its URI).
_HANDSHAKE = {
    b"host",
    b"sec-websocket-key",
    b"sec-websocket-version",
    b"sec-websocket-extensions",
    b"sec-websocket-protocol",
}


async def connect_owner(
    path: str,
    host: str | None,
    target: str,
    headers: list[tuple[bytes, bytes]],
    subprotocols: list[str] | None,
) -> ClientConnection:
    """The handshake with the owner, carrying the client's Host (in the URI), headers and
    subprotocols. Raises OSError when nobody listens, InvalidStatus when the owner refuses."""
    uri = f"ws://{host or 'genvisor'}{target}"
    try:
        parse_uri(uri)
    except InvalidURI:
        uri = "ws://genvisor" + target
    return await unix_connect(
        path,
        uri,
        additional_headers=[
            (k.decode("latin-1"), v.decode("latin-1")) for k, v in headers if k not in _HANDSHAKE
        ],
        user_agent_header=None,
        subprotocols=cast(list[Subprotocol], subprotocols) or None,
        compression=None,
        max_size=None,
    )


def denial(exc: InvalidStatus) -> Response:
    """The owner's refusal of a handshake, as the client's."""
    answer = exc.response
    response = Response(answer.body or b"", status_code=answer.status_code)
    response.headers["content-type"] = answer.headers.get("content-type", "text/plain")
    return response


async def relay(
    websocket: WebSocket, upstream: ClientConnection, headers: list[tuple[bytes, bytes]]
) -> None:
    """Accept the client (with `headers` on the answer) and relay until either side ends."""
    async with upstream:
        await websocket.accept(subprotocol=upstream.subprotocol, headers=headers)
        async with anyio.create_task_group() as tg:
            tg.start_soon(_client_to_owner, websocket, upstream, tg.cancel_scope)
            await _owner_to_client(websocket, upstream)
            tg.cancel_scope.cancel()


async def _client_to_owner(
    websocket: WebSocket, upstream: ClientConnection, done: anyio.CancelScope
) -> None:
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                code = message.get("code", 1000)
                await upstream.close(code=code if code not in (1005, 1006) else 1000)
                return
            if message.get("text") is not None:
                await upstream.send(message["text"])
            elif message.get("bytes") is not None:
                await upstream.send(message["bytes"])
    except ConnectionClosed:
        pass
    finally:
        done.cancel()


async def _owner_to_client(websocket: WebSocket, upstream: ClientConnection) -> None:
    try:
        async for data in upstream:
            if isinstance(data, str):
                await websocket.send_text(data)
            else:
                await websocket.send_bytes(data)
    except ConnectionClosed:
        pass
    except (OSError, RuntimeError):
        return  # the client is gone
    rcvd = upstream.protocol.close_rcvd
    if rcvd is None or rcvd.code in (1005, 1006):
        code, reason = OWNER_GONE, "the genvisor owner process went away; reconnect to resume"
    else:
        code, reason = rcvd.code, rcvd.reason
    with contextlib.suppress(OSError, RuntimeError):
        await websocket.close(code=code, reason=reason)
