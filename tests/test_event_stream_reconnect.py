"""The CLI's event follower against a server that resets the first connection mid-handshake
(a server dying or still starting on its port), over real sockets."""

from __future__ import annotations

import argparse
import json
import socket
import struct
import threading

from websockets.sync.server import Server, ServerConnection, serve

from supervisor.cli.event_stream import EventFollower

# Each reset reaches the client either before or after it sent its upgrade request (two
# different exceptions in websockets); several of them cover both.
RESETS = 4


def _reset_then_serve(listener: socket.socket, ready: threading.Event, box: list[Server]) -> None:
    for _ in range(RESETS):
        conn, _ = listener.accept()
        # SO_LINGER 0: close sends RST, as a killed process's socket does.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()
    port = listener.getsockname()[1]
    listener.close()

    def handler(ws: ServerConnection) -> None:
        ws.send(json.dumps({"seq": 7, "type": "job.started", "data": {}}))
        for _ in ws:  # until the client leaves
            pass

    with serve(handler, "127.0.0.1", port) as server:
        box.append(server)
        ready.set()
        server.serve_forever()


def test_a_reset_during_the_handshake_is_retried_within_the_window() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    ready, box = threading.Event(), []  # type: ignore[var-annotated]
    thread = threading.Thread(target=_reset_then_serve, args=(listener, ready, box), daemon=True)
    thread.start()
    try:
        follower = EventFollower(
            argparse.Namespace(url=f"http://127.0.0.1:{port}"),
            since=3,
            reconnect_window_s=20.0,
            reconnects=1,  # mid-stream: the server may be restarting
        )
        first = next(iter(follower))
        assert first["seq"] == 7
        follower.close()
    finally:
        assert ready.wait(timeout=20)
        box[0].shutdown()
        thread.join(timeout=10)
