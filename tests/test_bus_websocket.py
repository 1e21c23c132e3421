"""`stream_events` over a real socket: uvicorn on a free loopback port, the `websockets` client."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from supervisor.bus import EventBus, EventType, JobQueued, Journal
from supervisor.bus.websocket_stream import GOING_AWAY, stream_events


class _Server:
    def __init__(self, bus: EventBus) -> None:
        self.bus = bus
        self.streams_ended = 0
        self.stream_ended = anyio.Event()
        self.url = ""

    async def endpoint(self, websocket: WebSocket) -> None:
        raw = websocket.query_params.get("since")
        try:
            await stream_events(websocket, self.bus, int(raw) if raw is not None else None)
        finally:
            self.streams_ended += 1
            self.stream_ended.set()


@asynccontextmanager
async def _serve(bus: EventBus) -> AsyncIterator[_Server]:
    server = _Server(bus)
    app = Starlette(routes=[WebSocketRoute("/v1/events", server.endpoint)])
    # Bound before uvicorn starts: a client can connect at once, no waiting for start-up.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server.url = f"ws://127.0.0.1:{sock.getsockname()[1]}/v1/events"
    config = uvicorn.Config(app, log_level="warning", lifespan="off", ws="websockets-sansio")
    uv = uvicorn.Server(config)
    async with anyio.create_task_group() as tg:
        tg.start_soon(uv.serve, [sock])
        try:
            yield server
        finally:
            uv.should_exit = True
    sock.close()


async def _recv(client: ClientConnection, count: int) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    with anyio.fail_after(10):
        while len(frames) < count:
            frames.append(json.loads(await client.recv()))
    return frames


def _queued(position: int) -> JobQueued:
    return JobQueued(job_id=f"job-{position}", position=position)


@pytest.mark.anyio
async def test_replay_then_live_over_a_real_socket() -> None:
    async with EventBus() as bus, _serve(bus) as server:
        for n in range(5):
            bus.publish(_queued(n))
        async with connect(f"{server.url}?since=2") as client:
            replayed = await _recv(client, 3)
            assert [f["seq"] for f in replayed] == [3, 4, 5]
            assert replayed[0] == {
                "seq": 3,
                "ts": replayed[0]["ts"],
                "type": "job.queued",
                "data": {"job_id": "job-2", "position": 2},
            }
            for n in range(5, 8):
                bus.publish(_queued(n))
            live = await _recv(client, 3)
            assert [f["seq"] for f in live] == [6, 7, 8]
            assert all(f["type"] == EventType.JOB_QUEUED for f in live)
        # The client left: the server's stream ends and unsubscribes.
        with anyio.fail_after(10):
            await server.stream_ended.wait()
        assert bus.stats.subscribers == 0


@pytest.mark.anyio
async def test_gap_notice_is_forwarded_to_the_client() -> None:
    async with EventBus(Journal(retention=100), ring=10) as bus, _serve(bus) as server:
        for n in range(150):
            bus.publish(_queued(n))
        async with connect(f"{server.url}?since=0") as client:
            frames = await _recv(client, 101)
        # Older than retention: announced as a gap, whose seq lets the client resume past it.
        assert frames[0]["type"] == "bus.gap"
        assert frames[0]["data"] == {"from_seq": 1, "to_seq": 50, "reason": "retention"}
        assert frames[0]["seq"] == 50
        assert [f["seq"] for f in frames[1:]] == list(range(51, 151))


@pytest.mark.anyio
async def test_bus_close_closes_the_socket_with_going_away() -> None:
    bus = EventBus()
    async with _serve(bus) as server, connect(server.url) as client:
        bus.publish(_queued(0))
        assert (await _recv(client, 1))[0]["seq"] == 1
        await bus.aclose()
        with anyio.fail_after(10), pytest.raises(ConnectionClosed) as closed:
            await client.recv()
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == GOING_AWAY
