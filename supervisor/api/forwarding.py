"""One owner per data folder in a multi-process host: the other processes forward to it.

A host app served by several worker processes (`uvicorn host:app --workers N`, gunicorn)
builds one `Runtime` per process; the runtime's lifespan elects the owner (the data folder's
lock) and the others follow (see `Runtime.lifespan`). This module is the api side of that:

- the owner serves the host's own ASGI app on a Unix socket in GENVISOR_HOME (see
  supervisor.api.owner_socket), beside its TCP port, for the followers;
- in a follower, every genvisor route (the route class below) and the WebSocket `/v1/events`
  are relayed to that socket: method, path, query, headers (Authorization and Origin
  included), body; the answer streams back; WebSocket frames go both ways (ws_relay);
- an owner that does not answer (it died: connection refused) makes the follower try the lock
  at once; requests wait up to `OWNER_WAIT_S` for an owner (a takeover), then answer 503 with
  the error JSON.

Every genvisor answer carries `x-genvisor-served-by: <pid>`, the process that took the
client's connection (a WebSocket carries it on its handshake response).

Invariants: the socket is served only while this process's runtime runs (it holds the lock);
a request that already crossed it is never sent on again. `/healthz` is never forwarded: it is
this process's liveness.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, cast

import anyio
import httpx
import uvicorn
from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import InvalidStatus

from supervisor.api.api_errors import user_error_response
from supervisor.api.owner_socket import SOCKET_NAME, bind_owner_socket, owner_server, socket_path
from supervisor.api.ws_relay import connect_owner, denial, relay
from supervisor.core.home_lock import read_owner
from supervisor.errors import ErrorCode
from supervisor.runtime import Runtime

__all__ = ["SERVED_BY", "SOCKET_NAME", "Forwarder", "forwarding_route_class", "socket_path"]

log = logging.getLogger("genvisor.api.forwarding")

SERVED_BY = "x-genvisor-served-by"
# Set by a follower on what it forwards: a process that is not (or no longer) running the
# runtime answers such a request itself (503) instead of sending it round again.
FORWARDED_BY = "x-genvisor-forwarded-by"
# How long a forwarded request waits for an owner to answer (a takeover takes about a second).
OWNER_WAIT_S = 10.0
_HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"expect",
}
_NOT_FORWARDED = _HOP_BY_HOP | {
    b"x-forwarded-for",
    b"x-forwarded-proto",
    SERVED_BY.encode(),
    FORWARDED_BY.encode(),
}


def _served_by() -> tuple[bytes, bytes]:
    return SERVED_BY.encode(), str(os.getpid()).encode()


class _ForwardedResponse(Response):
    """What a follower's route returns: the owner's answer, relayed as it streams."""

    def __init__(self, forwarder: Forwarder) -> None:
        super().__init__()
        self.forwarder = forwarder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.forwarder.http(scope, receive, send)


class Forwarder:
    """The forwarding of one router's runtime (see the module's docstring)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.path = socket_path(runtime.settings.home)
        self._client: httpx.AsyncClient | None = None
        self._server: uvicorn.Server | None = None  # on the socket, while the owner
        self._closing = False
        self._wait_scope: anyio.CancelScope | None = None

    @property
    def forwarding(self) -> bool:
        return self.runtime.share_home and not self.runtime.owns_home

    @contextlib.asynccontextmanager
    async def companion(self, app: Any) -> AsyncIterator[None]:
        """Beside the runtime for the app's lifetime: the client to the owner, and the socket
        while this process is the owner."""
        self._closing = False
        transport = httpx.AsyncHTTPTransport(uds=str(self.path))
        timeout = httpx.Timeout(None, connect=5.0, pool=10.0)
        async with httpx.AsyncClient(transport=transport, timeout=timeout) as client:
            self._client = client
            try:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._serve_socket, app)
                    try:
                        yield
                    finally:
                        self._closing = True
                        if self._wait_scope is not None:
                            self._wait_scope.cancel()
                        if self._server is not None:
                            self._server.should_exit = True
            finally:
                self._client = None

    async def _serve_socket(self, app: Any) -> None:
        with anyio.CancelScope() as self._wait_scope:
            await self.runtime.wait_owner()
        if self._closing or not self.runtime.owns_home:
            return
        if app is None:
            log.warning("no ASGI app was given to the lifespan: followers cannot forward here")
            return
        try:
            sock = bind_owner_socket(self.path)  # the lock is ours
        except OSError:
            log.exception("the owner cannot serve its followers on %s", self.path)
            return
        self._server = owner_server(app)
        self.runtime.home_lock.describe(url=f"unix:{self.path}")
        log.info("genvisor: this process (pid %d) owns %s", os.getpid(), self.runtime.settings.home)
        try:
            await self._server.serve(sockets=[sock])
        finally:
            self._server = None
            self.path.unlink(missing_ok=True)

    # -- HTTP ---------------------------------------------------------------------------------

    def response(self) -> Response:
        return _ForwardedResponse(self)

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = self._client
        if client is None or _forwarded(scope):
            await self._unavailable(self._not_here(scope))(scope, receive, send)
            return
        headers = _forward_headers(scope)
        has_body = any(k in (b"content-length", b"transfer-encoding") for k, _ in scope["headers"])
        url = "http://genvisor" + _target(scope)
        upstream: httpx.Response | None = None
        with anyio.move_on_after(OWNER_WAIT_S):
            delay = 0.05
            while True:
                request = client.build_request(
                    scope["method"],
                    url,
                    headers=headers,
                    content=_body(receive) if has_body else None,
                )
                try:
                    upstream = await client.send(request, stream=True)
                    break
                except httpx.ConnectError:
                    self.runtime.suspect_owner_gone()
                    await anyio.sleep(delay)
                    delay = min(delay * 2, 0.5)
                except (_ClientGone, httpx.TransportError) as exc:
                    log.warning("forwarding %s %s failed: %r", scope["method"], scope["path"], exc)
                    return
        if upstream is None:
            await self._unavailable(self._why_no_owner())(scope, receive, send)
            return
        try:
            out = [(k, v) for k, v in upstream.headers.raw if k.lower() not in _NOT_FORWARDED]
            out.append(_served_by())
            await send(
                {"type": "http.response.start", "status": upstream.status_code, "headers": out}
            )
            try:
                async for chunk in upstream.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except httpx.TransportError:
                # The owner went away mid-answer: the client's connection is closed without
                # the end of the body, so the client cannot take the part for the whole.
                self.runtime.suspect_owner_gone()
                log.warning("the owner went away while answering %s", scope["path"])
                return
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await upstream.aclose()

    def _not_here(self, scope: Scope) -> str:
        if _forwarded(scope):
            return "the process that owned genvisor's data folder is stopping"
        return "genvisor's lifespan is not running in this process"

    def _why_no_owner(self) -> str:
        owner = read_owner(self.runtime.settings.home)
        who = f"the process that owns it (pid {owner.pid})" if owner.pid else "no process"
        return (
            f"genvisor's data folder is shared by several processes and {who} did not answer "
            f"on {self.path} within {OWNER_WAIT_S:g} s"
        )

    def _unavailable(self, why: str) -> Response:
        return user_error_response(
            503,
            # The process that runs the service (a worker of the host's server) is gone.
            code=ErrorCode.WORKER_CRASHED,
            title="genvisor is changing hands",
            message=why,
            suggestions=[
                "Send the request again in a few seconds: another process of this server is "
                "taking over the generation service.",
                "If this lasts, check that the process named here is a genvisor host app and "
                "see its log.",
            ],
            headers={"Retry-After": "2", SERVED_BY: str(os.getpid())},
        )

    # -- WebSocket ----------------------------------------------------------------------------

    def stamped(self, websocket: WebSocket) -> WebSocket:
        """`websocket` whose handshake answer names this process."""

        async def send(message: Message) -> None:
            if message["type"] == "websocket.accept":
                message = {**message, "headers": [*message.get("headers", []), _served_by()]}
            await websocket.send(message)

        return WebSocket(websocket.scope, websocket.receive, send)

    async def relay_websocket(self, websocket: WebSocket) -> None:
        """The client's WebSocket relayed to the owner's, frame by frame, both ways."""
        scope = websocket.scope
        if _forwarded(scope):
            await self._deny(websocket, self._unavailable(self._not_here(scope)))
            return
        headers = _forward_headers(scope)
        host = websocket.headers.get("host")
        upstream: ClientConnection | None = None
        with anyio.move_on_after(OWNER_WAIT_S):
            delay = 0.05
            while upstream is None:
                try:
                    upstream = await connect_owner(
                        str(self.path), host, _target(scope), headers, scope.get("subprotocols")
                    )
                except InvalidStatus as exc:
                    await self._deny(websocket, denial(exc))
                    return
                except OSError:
                    self.runtime.suspect_owner_gone()
                    await anyio.sleep(delay)
                    delay = min(delay * 2, 0.5)
        if upstream is None:
            await self._deny(websocket, self._unavailable(self._why_no_owner()))
            return
        await relay(websocket, upstream, [_served_by()])

    async def _deny(self, websocket: WebSocket, response: Response) -> None:
        """Refuse the handshake with an HTTP answer where the server can send one."""
        response.headers[SERVED_BY] = str(os.getpid())
        if "websocket.http.response" in websocket.scope.get("extensions", {}):
            await websocket.send_denial_response(response)
        else:
            await websocket.close(code=1013 if response.status_code >= 500 else 1008)


class _ClientGone(Exception):
    """The client left while its request body was being forwarded."""


def _target(scope: Scope) -> str:
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    query: bytes = scope.get("query_string") or b""
    return raw.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")


def _forwarded(scope: Scope) -> bool:
    return any(k == FORWARDED_BY.encode() for k, _ in scope["headers"])


def _forward_headers(scope: Scope) -> list[tuple[bytes, bytes]]:
    headers = [(k, v) for k, v in scope["headers"] if k.lower() not in _NOT_FORWARDED]
    headers.append((FORWARDED_BY.encode(), str(os.getpid()).encode()))
    client = scope.get("client")
    if client:
        headers.append((b"x-forwarded-for", str(client[0]).encode()))
    scheme = str(scope.get("scheme", "http")).replace("ws", "http")
    headers.append((b"x-forwarded-proto", scheme.encode()))
    return headers


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        if message.get("body"):
            yield message["body"]
        if not message.get("more_body", False):
            return


class _ForwardingRoute(APIRoute):
    """A genvisor route that, in a follower, forwards instead of running its endpoint. It sits
    below the error route class in the MRO, so the token and the body limit are checked in
    the follower first."""

    forwarder: Forwarder | None = None

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        local = super().get_route_handler()
        forwarder = self.forwarder
        if forwarder is None or self.name == "healthz":
            return local

        async def handler(request: Request) -> Response:
            if forwarder.forwarding:
                return forwarder.response()
            return await local(request)

        return handler


class _StampingRoute(APIRoute):
    """Above the error route class: every answer made here (refusals included) names this
    process (a forwarded one names it as it streams)."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        inner = super().get_route_handler()

        async def handler(request: Request) -> Response:
            response = await inner(request)
            response.headers[SERVED_BY] = str(os.getpid())
            return response

        return handler


def forwarding_route_class(base: type[APIRoute], forwarder: Forwarder) -> type[APIRoute]:
    """`base` (the error route class) with forwarding beneath it and the served-by stamp
    above it (MRO: stamp, base, forwarding, APIRoute)."""
    bases = (_StampingRoute, base, _ForwardingRoute)
    return cast(type[APIRoute], type("ForwardingRoute", bases, {"forwarder": forwarder}))
