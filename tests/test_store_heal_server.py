"""A damaged jobs database through the real server: healed at start (DEGRADED with the reason,
the damaged copy kept), damaged while running (503 STORE.CORRUPTED, /readyz says why), healed
again at the next start. Real SQLite files damaged on disk, real processes and sockets."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.runtime_harness import make_home
from tests.server_process import GENVISOR, ServerProcess, read_events_until, running_server

pytestmark = pytest.mark.slow

SMALL = {"prompt": "a paper boat", "width": 32, "height": 32, "frames": 5, "steps": 2}


def _until(srv: ServerProcess, match: Any) -> dict[str, Any]:
    return read_events_until(f"{srv.ws_url}/v1/events?since=0", match)


def _settled(srv: ServerProcess) -> str:
    event = _until(
        srv,
        lambda e: e["type"] == "supervisor.transition" and e["data"]["to"] in ("ready", "degraded"),
    )
    return str(event["data"]["to"])


def _run_job(srv: ServerProcess) -> str:
    job = httpx.post(f"{srv.url}/v1/jobs", json=SMALL, timeout=30).json()
    ended = _until(
        srv,
        lambda e: e["type"] in ("job.succeeded", "job.failed") and e["data"]["job_id"] == job["id"],
    )
    assert ended["type"] == "job.succeeded", ended
    return str(job["id"])


def _garble(path: Path, at: float) -> None:
    size = path.stat().st_size
    with path.open("r+b") as f:
        f.seek(int(size * at))
        f.write(os.urandom(4096))


def test_a_damaged_jobs_database_is_healed_and_said(tmp_path: Path, tiny_model: Path) -> None:
    home = make_home(tmp_path, tiny_model)
    db = home / "jobs.sqlite3"
    with running_server(home) as srv:
        _settled(srv)
        done = [_run_job(srv) for _ in range(3)]
        assert srv.terminate() == 0
    _garble(db, 0.5)

    with running_server(home) as srv:
        # (The replay holds the previous run's transitions too: wait for this one's.)
        _until(
            srv, lambda e: e["type"] == "supervisor.transition" and e["data"]["to"] == "degraded"
        )
        ready = httpx.get(f"{srv.url}/readyz")
        assert ready.status_code == 200  # degraded still serves
        reason = ready.json()["degraded_reasons"]["store:jobs"]
        assert reason.startswith("the jobs database was damaged; moved to ")
        (moved,) = home.glob("jobs.sqlite3.damaged-*")
        assert str(moved) in reason
        listed = httpx.get(f"{srv.url}/v1/jobs").json()
        assert listed["counts"]["succeeded"] <= len(done)
        _run_job(srv)  # the fresh database takes jobs
        shown = subprocess.run(
            [GENVISOR, "state", "--url", srv.url], capture_output=True, text=True, timeout=30
        )
        assert "DEGRADED" in shown.stdout
        assert "the jobs database was damaged" in shown.stdout

        # Damaged under the running server: its pages leave the WAL for the main file, which
        # is then cut in half. The answer says so, and /readyz too.
        with closing(sqlite3.connect(db)) as other:
            other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        with db.open("r+b") as f:
            f.truncate(db.stat().st_size // 2)
        bad = httpx.get(f"{srv.url}/v1/jobs", timeout=30)
        assert bad.status_code == 503, bad.text
        assert bad.json()["code"] == "STORE.CORRUPTED"
        assert bad.json()["technical"]["traceback"] == ""
        not_ready = httpx.get(f"{srv.url}/readyz")
        assert not_ready.status_code == 503
        assert any("jobs database is damaged" in r for r in not_ready.json()["reasons"])

    with running_server(home) as srv:
        _settled(srv)
        _run_job(srv)  # healed (again, where it was damaged) and serving
    assert list(home.glob("jobs.sqlite3.damaged-*"))
