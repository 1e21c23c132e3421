"""genvisor embedded in a host FastAPI backend (tests/embedding_host.py), served by uvicorn in
a real process: the host's own routes and genvisor's (under /genvisor) both work, a job runs
through the prefix, the WebSocket works under it, and the host's shutdown stops the supervisor
and the worker process."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from supervisor.api.forwarding import SERVED_BY, socket_path
from tests.runtime_harness import make_home
from tests.server_process import (
    GENVISOR,
    free_port,
    read_events_until,
    server_env,
    uvicorn_process,
)

pytestmark = pytest.mark.slow

HOST_SCRIPT = Path(__file__).with_name("embedding_host.py")
REPO = HOST_SCRIPT.parent.parent
SMALL = {"prompt": "a kite over a beach", "width": 32, "height": 32, "frames": 5, "steps": 2}


@dataclass
class HostProcess:
    proc: subprocess.Popen[str]
    port: int
    home: Path
    marker: Path
    log_lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def genvisor(self) -> str:
        return f"{self.url}/genvisor"


@pytest.fixture
def host(tmp_path: Path, tiny_model: Path) -> Iterator[HostProcess]:
    home = make_home(tmp_path, tiny_model)
    port = free_port()
    marker = tmp_path / "host-lifespan.txt"
    env = server_env(home, PYTHONPATH=str(REPO))
    command = [sys.executable, str(HOST_SCRIPT), str(port), str(marker)]
    with uvicorn_process(command, env=env, cwd=REPO) as (proc, log_lines):
        yield HostProcess(proc=proc, port=port, home=home, marker=marker, log_lines=log_lines)


def wait_event(ws_url: str, match: Any, *, headers: dict[str, str] | None = None) -> dict[str, Any]:
    return read_events_until(ws_url, match, headers=headers)


def test_host_routes_and_genvisor_under_a_prefix_then_clean_shutdown(host: HostProcess) -> None:
    # The host's own routes, its lifespan state and its own validation format are untouched.
    assert httpx.get(f"{host.url}/hello").json() == {"message": "hello from the host"}
    assert httpx.get(f"{host.url}/items/3").json() == {"item_id": 3}
    host_invalid = httpx.get(f"{host.url}/items/x")
    assert host_invalid.status_code == 422
    assert "detail" in host_invalid.json()
    assert host.marker.read_text() == "started\n"
    assert httpx.get(f"{host.genvisor}/healthz").json() == {"status": "alive"}
    assert httpx.get(f"{host.url}/v1/state").status_code == 404  # only under the prefix

    # A job through the prefix, followed on the WebSocket under the prefix.
    r = httpx.post(f"{host.genvisor}/v1/jobs", json=SMALL)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert r.headers["location"] == f"{host.genvisor}/v1/jobs/{job_id}"
    done = wait_event(
        f"ws://127.0.0.1:{host.port}/genvisor/v1/events?since=0",
        lambda e: e["type"] in ("job.succeeded", "job.failed") and e["data"]["job_id"] == job_id,
        headers={"Origin": host.url},  # a page served by the host itself may follow events
    )
    assert done["type"] == "job.succeeded", done
    video = httpx.get(f"{host.genvisor}/v1/jobs/{job_id}/output")
    assert video.status_code == 200
    assert video.headers["content-type"] == "video/mp4"
    assert video.content[4:8] == b"ftyp"

    # genvisor's error contract holds inside the host app (its route class, not the host's).
    bad = httpx.post(f"{host.genvisor}/v1/jobs", json={**SMALL, "frames": 6})
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "frames"
    missing = httpx.get(f"{host.genvisor}/v1/jobs/nope")
    assert missing.status_code == 404
    assert missing.json()["title"] == "No such job"
    with pytest.raises(InvalidStatus) as refused:
        connect(
            f"ws://127.0.0.1:{host.port}/genvisor/v1/events",
            open_timeout=10,
            additional_headers={"Origin": "http://evil.example"},
        )
    assert refused.value.response.status_code == 403

    # The person-facing CLI works through the prefix too.
    shown = subprocess.run(
        [GENVISOR, "jobs", "show", job_id, "--json", "--url", host.genvisor],
        capture_output=True,
        text=True,
        timeout=60,
        env=server_env(host.home),
    )
    assert json.loads(shown.stdout)["status"] == "succeeded"

    answer = httpx.get(f"{host.genvisor}/v1/state")
    state = answer.json()
    assert state["pid"] == host.proc.pid
    # One process: it owns the folder and serves the socket followers would forward to.
    assert answer.headers[SERVED_BY] == str(host.proc.pid)
    assert socket_path(host.home).is_socket()
    assert state["heavy_modules_loaded"] == []
    worker_pid = next(c for c in state["children"] if c["id"] == "generator")["pid"]
    assert worker_pid is not None
    os.kill(worker_pid, 0)  # alive while the host serves

    host.proc.send_signal(signal.SIGTERM)
    # Plain uvicorn re-raises the signal after a complete shutdown: both exits are clean.
    assert host.proc.wait(timeout=60) in (0, -signal.SIGTERM)
    assert "Application shutdown complete." in "".join(host.log_lines)
    assert host.marker.read_text() == "started\nstopped\n"
    with pytest.raises(ProcessLookupError):
        os.kill(worker_pid, 0)  # no orphan worker
    with sqlite3.connect(host.home / "events.sqlite3") as db:
        last = db.execute(
            "SELECT body FROM events WHERE type = 'supervisor.transition' ORDER BY seq DESC"
        ).fetchone()
    assert json.loads(last[0])["data"]["to"] == "stopped"
    assert not socket_path(host.home).exists()  # removed by its owner on the way out
