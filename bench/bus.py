"""Event bus benchmark: in-process fan-out throughput and WebSocket latency on loopback.

    .venv/bin/python bench/bus.py [--events 100000] [--ws-seconds 4] [--client-procs 2]

Prints progress on stderr and one JSON object on its last stdout line:

- ``inproc_events_per_s``: events published and received by 9 fast subscribers, with a 10th
  subscriber that never reads (the journal, in a SQLite file, is written meanwhile); the
  comparison run has the same 9 fast subscribers and no stalled one;
- ``ws_p50_ms`` / ``ws_p99_ms``: publish-to-receipt latency for 50 WebSocket clients at
  1,000 events/s, with one more client that never reads. The server (uvicorn, the real
  `stream_events`) runs in a subprocess; the clients run in ``--client-procs`` processes. The
  latency is the receipt time minus the envelope's ``ts``, which the bus stamps at publication;
  server and clients share the machine's clock. Two runs with and two without the stalled
  client, in A-B-B-A order, averaged;
- ``stalled_effect_pct``: the largest relative change of those figures (throughput, p50, p99)
  between the runs with and without the stalled subscriber/client.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from supervisor.bus import EventBus, Journal, VramSample, VramSource  # noqa: E402


def _sample(n: int) -> VramSample:
    return VramSample(
        source=VramSource.HOST, device="cpu", total=1 << 34, used=n, free=(1 << 34) - n
    )


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- in process ---------------------------------------------------------------------------------


async def _inproc_run(events: int, stalled: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        journal = Journal(Path(tmp) / "journal.sqlite3", retention=200_000)
        async with EventBus(journal, buffer=1024) as bus:
            fast_count = 9
            done = anyio.Event()
            finished = 0
            lagged = 0
            # The seq each fast reader got to: the publisher keeps at most half a buffer ahead
            # of the slowest fast reader (credit-based flow control, as a real producer would),
            # so the figure is events delivered, not events dropped.
            progress: list[int] = []

            async def read(subscription: Any) -> None:
                nonlocal finished, lagged
                slot = len(progress)
                progress.append(0)
                async for event in subscription:
                    if event.type == "bus.lagged":
                        lagged += 1
                    progress[slot] = event.seq
                    if event.seq == last:
                        break
                finished += 1
                if finished == fast_count:
                    done.set()

            async with anyio.create_task_group() as tg:
                subscriptions = []
                for _ in range(fast_count):
                    sub_cm = bus.subscribe()
                    subscriptions.append(sub_cm)
                    tg.start_soon(_enter_and_read, sub_cm, read)
                stalled_cm = bus.subscribe()
                if stalled:
                    stalled_sub = await stalled_cm.__aenter__()
                await anyio.wait_all_tasks_blocked()
                last = bus.last_seq + events
                started = time.perf_counter()
                for n in range(events):
                    bus.publish(_sample(n))
                    if n % 128 == 127:
                        await anyio.lowlevel.checkpoint()
                        while bus.last_seq - min(progress) > 512:
                            await anyio.lowlevel.checkpoint()
                await done.wait()
                elapsed = time.perf_counter() - started
                stalled_dropped = stalled_sub.dropped_total if stalled else 0
                if stalled:
                    await stalled_cm.__aexit__(None, None, None)
        return {
            "events_per_s": events / elapsed,
            "fast_subscribers_lagged": lagged,
            "stalled_dropped": stalled_dropped,
        }


async def _enter_and_read(cm: Any, read: Any) -> None:
    async with cm as subscription:
        await read(subscription)


# -- WebSocket server (subprocess) --------------------------------------------------------------


def _serve() -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket

    from supervisor.bus.websocket_stream import stream_events

    tmp = tempfile.mkdtemp(prefix="genvisor-bench-")
    bus = EventBus(Journal(Path(tmp) / "journal.sqlite3", retention=200_000))

    async def events(websocket: WebSocket) -> None:
        await stream_events(websocket, bus, None)

    async def publish(request: Request) -> JSONResponse:
        rate = float(request.query_params["rate"])
        count = int(request.query_params["count"])
        first = bus.last_seq + 1

        async def run() -> None:
            started = time.perf_counter()
            sent = 0
            while sent < count:
                due = min(count, int((time.perf_counter() - started) * rate) + 1)
                while sent < due:
                    bus.publish(_sample(sent))
                    sent += 1
                await asyncio.sleep(max(0.0, started + sent / rate - time.perf_counter()))

        asyncio.get_running_loop().create_task(run())
        return JSONResponse({"first": first, "last": first + count - 1})

    async def stats(request: Request) -> JSONResponse:
        s = bus.stats
        return JSONResponse({"subscribers": s.subscribers, "dropped_total": s.dropped_total})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with bus:
            yield

    app = Starlette(
        routes=[
            WebSocketRoute("/v1/events", events),
            Route("/publish", publish, methods=["POST"]),
            Route("/stats", stats),
        ],
        lifespan=lifespan,
    )
    sock = socket.socket()
    # Accepted sockets inherit this cap. Linux would otherwise let a stalled client's socket
    # absorb up to 4 MiB (about 20 s of this run) before the server's sends block; capped, the
    # stalled client reaches the drop-and-announce regime within the run. Same for both runs.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", ws="websockets-sansio"))
    server.run(sockets=[sock])


# -- WebSocket clients (subprocesses) -----------------------------------------------------------


async def _clients(url: str, count: int, stalled: bool, first: int, last: int) -> None:
    from websockets.asyncio.client import connect

    latencies: list[float] = []
    warm = first + (last - first) // 10  # the first tenth is warm-up
    connected = 0
    all_connected = asyncio.Event()

    async def client() -> None:
        nonlocal connected
        async with connect(url, max_queue=64) as ws:
            connected += 1
            if connected == count:
                all_connected.set()
            while True:
                raw = await ws.recv()
                now = time.time()
                event = json.loads(raw)
                seq = event["seq"]
                if seq >= warm and event["type"] == "vram.sample":
                    latencies.append((now - event["ts"]) * 1000.0)
                if seq >= last:
                    return

    async def never_reads() -> None:
        # A small receive window, as a slow remote client has: the server's socket fills up
        # within the run, its sends block, and its bus buffer drops and announces.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        host, port = url.split("/")[2].split(":")
        sock.connect((host, int(port)))
        sock.setblocking(False)
        async with connect(url, sock=sock, max_queue=1):
            await asyncio.sleep(3600)

    if stalled:
        stall = asyncio.create_task(never_reads())
        await asyncio.sleep(0.2)
        print("READY", flush=True)
        # Stalled until the orchestrator closes our stdin.
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        stall.cancel()
        print("[]", flush=True)
        return
    tasks = [asyncio.create_task(client()) for _ in range(count)]
    await all_connected.wait()
    print("READY", flush=True)
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)
    print(json.dumps(latencies), flush=True)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ws_run(clients: int, procs: int, seconds: float, stalled: bool) -> dict[str, Any]:
    me = str(Path(__file__).resolve())
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(
        [sys.executable, me, "--serve"], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline().split()[1])
        base = f"127.0.0.1:{port}"
        rate, count = 1000.0, int(1000 * seconds)
        # The clients learn the seq range up front: the server's bus is fresh, so 1..count.
        shares = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
        workers = [
            subprocess.Popen(
                [sys.executable, me, "--clients", f"ws://{base}/v1/events", str(share)]
                + ["--first", "1", "--last", str(count)],
                stdout=subprocess.PIPE,
                text=True,
                env=env,
            )
            for i, share in enumerate(shares)
        ]
        if stalled:
            # The stalled client has a process of its own, so the figures show its effect on
            # the server, not on the fast clients' event loops.
            workers.append(
                subprocess.Popen(
                    [sys.executable, me, "--clients", f"ws://{base}/v1/events", "0"]
                    + ["--stalled", "--first", "1", "--last", str(count)],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                    env=env,
                )
            )
        for worker in workers:
            assert worker.stdout is not None
            if worker.stdout.readline().strip() != "READY":
                raise RuntimeError("a client process failed to connect")
        request = urllib.request.Request(
            f"http://{base}/publish?rate={rate}&count={count}", method="POST"
        )
        urllib.request.urlopen(request, timeout=10).read()
        latencies: list[float] = []
        for worker in workers[: len(shares)]:
            out, _ = worker.communicate(timeout=seconds + 60)
            latencies.extend(json.loads(out.strip().splitlines()[-1]))
        stats = json.loads(urllib.request.urlopen(f"http://{base}/stats", timeout=10).read())
        for worker in workers[len(shares) :]:
            worker.communicate(input="", timeout=30)
    finally:
        server.terminate()
        server.wait(timeout=15)
    return {
        "p50_ms": _percentile(latencies, 0.50),
        "p99_ms": _percentile(latencies, 0.99),
        "samples": len(latencies),
        "server_dropped_total": stats["dropped_total"],
    }


def _mean_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    return {key: sum(r[key] for r in runs) / len(runs) for key in runs[0]}


def _change_pct(base: float, other: float) -> float:
    return abs(other - base) / base * 100.0 if base else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--ws-clients", type=int, default=50)
    parser.add_argument("--ws-seconds", type=float, default=3.0)
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--clients", nargs=2, metavar=("URL", "COUNT"), help=argparse.SUPPRESS)
    parser.add_argument("--stalled", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--last", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        _serve()
        return
    if args.clients:
        url, count = args.clients
        asyncio.run(_clients(url, int(count), args.stalled, args.first, args.last))
        return

    started = time.perf_counter()
    inproc_base = anyio.run(_inproc_run, args.events, False)
    _log(f"in process, 9 fast subscribers: {inproc_base}")
    inproc = anyio.run(_inproc_run, args.events, True)
    _log(f"in process, 9 fast + 1 stalled: {inproc}")
    # A-B-B-A order, averaged: a drift in the machine's load cancels out of the comparison.
    runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    for stalled in (False, True, True, False):
        run = _ws_run(args.ws_clients, args.client_procs, args.ws_seconds, stalled)
        _log(f"WebSocket, {args.ws_clients} clients{' + 1 stalled' if stalled else ''}: {run}")
        runs[stalled].append(run)
    ws_base, ws = (_mean_run(runs[False]), _mean_run(runs[True]))
    effects = {
        "inproc": _change_pct(inproc_base["events_per_s"], inproc["events_per_s"]),
        "ws_p50": _change_pct(ws_base["p50_ms"], ws["p50_ms"]),
        "ws_p99": _change_pct(ws_base["p99_ms"], ws["p99_ms"]),
    }
    result = {
        "inproc_events_per_s": round(inproc["events_per_s"]),
        "ws_p50_ms": round(ws["p50_ms"], 3),
        "ws_p99_ms": round(ws["p99_ms"], 3),
        "stalled_effect_pct": round(max(effects.values()), 1),
        "stalled_effect_detail_pct": {k: round(v, 1) for k, v in effects.items()},
        "inproc_events_per_s_without_stalled": round(inproc_base["events_per_s"]),
        "ws_p50_ms_without_stalled": round(ws_base["p50_ms"], 3),
        "ws_p99_ms_without_stalled": round(ws_base["p99_ms"], 3),
        "fast_subscribers_lagged": inproc["fast_subscribers_lagged"],
        "stalled_dropped_inproc": inproc["stalled_dropped"],
        "stalled_dropped_ws": ws["server_dropped_total"],
        "ws_samples": ws["samples"],
        "cpus": os.cpu_count(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
