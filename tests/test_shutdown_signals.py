"""Signals to the whole service stop it cleanly; a killed server leaves no worker behind.

`docker stop`, systemd, `timeout` and a terminal's Ctrl-C signal a whole process group. The
worker lives in its own session and ignores SIGINT/SIGTERM, so only the control process gets
them and stops the worker itself: no worker crash, no restart scheduled mid-shutdown. When the
control process dies without a word (`kill -9`) the worker notices its channel's EOF and exits.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from supervisor.bus import Journal
from tests.runtime_harness import make_home
from tests.server_process import GENVISOR, free_port, read_events_until, server_env

pytestmark = pytest.mark.slow

# Long enough (tens of seconds) to be mid-denoise whenever the signal lands.
LONG = {"prompt": "a paper boat", "width": 64, "height": 64, "frames": 9, "steps": 1000}
READY = "starting -> ready"
ORPHAN_LIMIT_S = 15.0


@dataclass
class GroupServer:
    """`genvisor serve` as the leader of its own process group, as under a service manager."""

    proc: subprocess.Popen[str]
    port: int
    lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines if line.startswith("{")]

    def worker_pid(self) -> int:
        children = httpx.get(f"{self.url}/v1/state", timeout=10).json()["children"]
        pid: int = next(c for c in children if c["id"] == "generator")["pid"]
        return pid

    def start_long_job(self) -> str:
        job_id: str = httpx.post(f"{self.url}/v1/jobs", json=LONG, timeout=10).json()["id"]
        read_events_until(
            f"ws://127.0.0.1:{self.port}/v1/events?since=0",
            lambda e: e["type"] == "job.progress" and e["data"].get("stage") == "denoise",
        )
        return job_id


@contextmanager
def group_server(home: Path) -> Iterator[GroupServer]:
    port = free_port()
    proc = subprocess.Popen(
        [GENVISOR, "serve", "--port", str(port)],
        env=server_env(home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    server = GroupServer(proc, port)
    ready = threading.Event()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            server.lines.append(line)
            if READY in line:
                ready.set()
        ready.set()  # the process ended: stop waiting

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        assert ready.wait(120), "no ready transition within 120 s"
        assert proc.poll() is None, "".join(server.lines[-40:])
        yield server
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        reader.join(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


def exited_within(pidfd: int, limit_s: float) -> bool:
    """A pidfd turns readable when its process ends: a wait on the process itself."""
    readable, _, _ = select.select([pidfd], [], [], limit_s)
    return bool(readable)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_to_the_process_group_is_a_clean_stop_not_a_worker_crash(
    tmp_path: Path, tiny_model: Path, signum: signal.Signals
) -> None:
    home = make_home(tmp_path, tiny_model)
    with group_server(home) as server:
        server.start_long_job()
        worker = server.worker_pid()  # the one running the job
        # Only the control process is in the group the signal goes to.
        assert os.getpgid(server.proc.pid) == server.proc.pid
        assert os.getsid(worker) == worker != server.proc.pid
        pidfd = os.pidfd_open(worker)
        try:
            assert not exited_within(pidfd, 0)
            os.killpg(server.proc.pid, signum)
            assert server.proc.wait(timeout=60) == 0, "".join(server.lines[-40:])
            assert exited_within(pidfd, 10.0), "the worker outlived its server"
        finally:
            os.close(pidfd)
    records = server.records()
    messages = [r["msg"] for r in records]
    problems = [
        r
        for r in records
        if r["level"] in ("error", "critical")
        or "-> failed" in r["msg"]
        or "restart generator" in r["msg"]
        or "killed by signal" in r["msg"]
    ]
    assert problems == [], problems
    assert any("-> stopping (stop): shutdown requested" in m for m in messages), messages
    assert any("stopping -> stopped" in m for m in messages), messages
    journal = Journal(home / "events.sqlite3")
    try:
        types = [e.type.value for e in journal.read(0, limit=100_000)]
    finally:
        journal.close()
    assert "actor.crashed" not in types
    assert "actor.restarted" not in types
    # The job ran and never finished: the signal landed mid-generation.
    assert "job.progress" in types
    assert "job.succeeded" not in types


def test_kill_9_of_the_server_leaves_no_orphan_worker(tmp_path: Path, tiny_model: Path) -> None:
    home = make_home(tmp_path, tiny_model)
    with group_server(home) as server:
        server.start_long_job()
        worker = server.worker_pid()  # the one running the job
        pidfd = os.pidfd_open(worker)
        try:
            assert not exited_within(pidfd, 0)
            os.kill(server.proc.pid, signal.SIGKILL)
            assert server.proc.wait(timeout=30) == -signal.SIGKILL
            # Busy in a job, the worker still leaves by itself: its channel reached EOF.
            gone = exited_within(pidfd, ORPHAN_LIMIT_S)
            if not gone:
                os.kill(worker, signal.SIGKILL)  # leave nothing behind, then fail
            assert gone, f"worker {worker} still running {ORPHAN_LIMIT_S:g} s after its server"
        finally:
            os.close(pidfd)
