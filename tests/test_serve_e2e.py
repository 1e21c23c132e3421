"""`genvisor serve` in a subprocess, driven through real sockets and the real CLI."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from supervisor.bus import Journal, SupervisorTransition
from tests.server_process import GENVISOR, free_port, running_server, server_env

pytestmark = pytest.mark.slow


def _events_until_ready(ws_url: str, **kw: object) -> list[dict[str, object]]:
    events = []
    with connect(f"{ws_url}/v1/events?since=0", open_timeout=10, **kw) as ws:  # type: ignore[arg-type]
        while True:
            event = json.loads(ws.recv(timeout=10))
            events.append(event)
            if event["type"] == "supervisor.transition" and event["data"]["to"] == "ready":
                return events


def test_serve_replays_startup_refuses_foreign_origin_and_exits_on_sigterm(tmp_path: Path) -> None:
    with running_server(tmp_path) as server:
        assert httpx.get(f"{server.url}/healthz").json() == {"status": "alive"}

        events = _events_until_ready(server.ws_url)
        transitions = [e for e in events if e["type"] == "supervisor.transition"]
        assert transitions[0]["data"]["from"] == "starting"
        assert transitions[-1]["data"]["to"] == "ready"
        seqs = [e["seq"] for e in events]
        assert seqs == sorted(set(seqs))
        started = {e["data"]["actor"] for e in events if e["type"] == "actor.started"}
        assert started == {"model_loader", "generator", "vram_monitor"}

        # Same-origin browser pages are allowed; a foreign one is refused before any event.
        _events_until_ready(server.ws_url, origin=f"http://127.0.0.1:{server.port}")
        with pytest.raises(InvalidStatus) as refused:
            _events_until_ready(server.ws_url, origin="http://evil.example")
        assert refused.value.response.status_code == 403

        assert httpx.get(f"{server.url}/readyz").status_code == 200
        state = subprocess.run(
            [GENVISOR, "state", "--json", "--url", server.url],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        dump = json.loads(state.stdout)
        assert dump["state"] == "ready"
        assert {c["id"] for c in dump["children"]} == {"model_loader", "generator", "vram_monitor"}
        assert all(c["status"] == "idle" for c in dump["children"])
        assert dump["history"][-1]["to_state"] == "ready"
        assert "subscribers" in dump["bus"]
        assert dump["heavy_modules_loaded"] == []

        graph = subprocess.run(
            [GENVISOR, "state", "--graph", "--url", server.url],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        assert "ready s_active" in graph.stdout

        reset = httpx.post(f"{server.url}/v1/supervisor/reset")
        assert reset.status_code == 409

        t0 = time.monotonic()
        assert server.terminate(timeout=10) == 0
        assert time.monotonic() - t0 < 10
    # The journal was flushed on the way out: the stop transitions are in it.
    journal = Journal(tmp_path / "events.sqlite3")
    try:
        rows = journal.read(0, limit=10_000)
    finally:
        journal.close()
    stopped = [e.data for e in rows if isinstance(e.data, SupervisorTransition)]
    assert stopped[-1].to_state.value == "stopped"


def test_state_without_server_says_so_in_one_line() -> None:
    result = subprocess.run(
        [GENVISOR, "state", "--url", f"http://127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "no genvisor server at" in result.stderr


def test_token_required_when_exposed(tmp_path: Path) -> None:
    # Binding beyond loopback without a token stops start-up with a message naming the key.
    result = subprocess.run(
        [GENVISOR, "serve", "--host", "0.0.0.0", "--port", str(free_port())],
        env=server_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "api_token" in result.stderr


def test_token_guards_http_and_websocket(tmp_path: Path) -> None:
    token = "s3cret-s3cret-s3cret"  # tokens have at least 16 characters
    with running_server(tmp_path, GENVISOR_API_TOKEN=token) as server:
        assert httpx.get(f"{server.url}/healthz").status_code == 200
        assert httpx.get(f"{server.url}/v1/state").status_code == 401
        ok = httpx.get(f"{server.url}/v1/state", headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200
        with pytest.raises(InvalidStatus):
            _events_until_ready(server.ws_url)
        events = _events_until_ready(
            server.ws_url, additional_headers={"Authorization": f"Bearer {token}"}
        )
        assert events[-1]["data"]["to"] == "ready"


def test_config_error_names_the_key(tmp_path: Path) -> None:
    result = subprocess.run(
        [GENVISOR, "serve"],
        env=server_env(tmp_path, GENVISOR_STALL_TIMEOUT="-3"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "stall_timeout" in result.stderr
    assert "-3" in result.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('port = "eighty"\nlog_format = "xml"\n')
    result = subprocess.run(
        [GENVISOR, "--config", str(bad), "serve"],
        env=server_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "'port'" in result.stderr
    assert "eighty" in result.stderr
