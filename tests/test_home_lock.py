"""One owner per data folder: the lock itself, and second servers refused at once (real
processes, real sockets)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from supervisor.core.exceptions import HomeInUse
from supervisor.core.home_lock import HomeLock, read_owner
from tests.runtime_harness import make_home
from tests.server_process import (
    GENVISOR,
    free_port,
    read_events_until,
    running_server,
    server_env,
)

# The second instance, run so that the test also sees what it imported.
SECOND_SERVE = (
    "import sys\n"
    "from supervisor.cli.main import main\n"
    "rc = main(sys.argv[1:])\n"
    "heavy = sorted(m for m in ('torch', 'diffusers') if m in sys.modules)\n"
    "print('heavy:', heavy, file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def test_a_second_lock_on_one_folder_is_refused_with_the_owner(tmp_path: Path) -> None:
    first = HomeLock(tmp_path)
    first.acquire()
    first.describe(url="http://127.0.0.1:8765")
    with pytest.raises(HomeInUse) as refused:
        HomeLock(tmp_path).acquire()
    assert refused.value.pid == os.getpid()
    assert refused.value.url == "http://127.0.0.1:8765"
    assert refused.value.since is not None
    assert refused.value.since <= time.time()
    assert f"pid {os.getpid()}, serving http://127.0.0.1:8765" in str(refused.value)
    first.release()
    second = HomeLock(tmp_path)
    second.acquire()
    assert second.held
    assert read_owner(tmp_path).pid == os.getpid()
    second.release()


def test_the_lock_dies_with_its_process(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from supervisor.core.home_lock import HomeLock;"
            f"HomeLock(Path({str(tmp_path)!r})).acquire(); print('held', flush=True);"
            "sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(HomeInUse) as refused:
            HomeLock(tmp_path).acquire()
        assert refused.value.pid == holder.pid
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        for stream in (holder.stdin, holder.stdout):
            if stream is not None:
                stream.close()
    lock = HomeLock(tmp_path)
    lock.acquire()  # a stale lock file never blocks a restart
    assert lock.held
    lock.release()


def _second(home: Path, port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", SECOND_SERVE, *args, "--port", str(port)],
        env=server_env(home),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.slow
def test_second_servers_are_refused_and_the_first_keeps_serving(
    tmp_path: Path, tiny_model: Path
) -> None:
    home = make_home(tmp_path, tiny_model)
    with running_server(home) as server:
        for port in (free_port(), server.port):
            second = _second(home, port, "serve")
            assert second.returncode == 1
            line, heavy = second.stderr.strip().splitlines()
            assert line.startswith("genvisor: another genvisor (pid ")
            assert f"serving http://127.0.0.1:{server.port}" in line
            assert f"uses the data folder {home}" in line
            assert heavy == "heavy: []"

        # A writer of the model store is refused too while the server owns the folder.
        tiny = subprocess.run(
            [GENVISOR, "models", "make-tiny"],
            env=server_env(home),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert tiny.returncode == 1
        assert "uses the data folder" in tiny.stderr

        # Another folder on the genvisor's port: the port is named, and who holds it.
        other = _second(tmp_path / "other", server.port, "serve")
        assert other.returncode == 1
        assert other.stderr.splitlines()[0] == (
            f"genvisor: port {server.port} on 127.0.0.1 is in use — a genvisor answers there; "
            "choose another with --port or GENVISOR_PORT"
        )
        # Refused before start-up: no store was created in the other folder.
        assert sorted(p.name for p in (tmp_path / "other").iterdir()) == ["genvisor.lock"]

        # Writers of the model store go through the server that owns the folder.
        for verb in ("pull", "repair"):
            through = subprocess.run(
                [GENVISOR, "models", verb, "tiny-wan"],
                env=server_env(home),
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert through.returncode == 0, through.stderr
            assert through.stdout.startswith(f"tiny-wan: {verb} done by the server at {server.url}")

        # The first server never noticed: ready, and it runs a job to the end.
        read_events_until(
            f"{server.ws_url}/v1/events?since=0",
            lambda e: e["type"] == "supervisor.transition" and e["data"]["to"] == "ready",
        )
        ready = httpx.get(f"{server.url}/readyz")
        assert ready.status_code == 200, ready.text
        job = httpx.post(
            f"{server.url}/v1/jobs",
            json={
                "prompt": "a lighthouse",
                "width": 32,
                "height": 32,
                "frames": 5,
                "steps": 2,
            },  # fmt: skip
        ).json()
        ended = read_events_until(
            f"{server.ws_url}/v1/events?since=0",
            lambda e: (
                e["type"] in ("job.succeeded", "job.failed") and e["data"]["job_id"] == job["id"]
            ),
        )
        assert ended["type"] == "job.succeeded", ended


@pytest.mark.slow
def test_a_port_held_by_another_program_is_named_before_start_up(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        refused = _second(tmp_path, port, "serve")
    assert refused.returncode == 1
    assert refused.stderr.splitlines()[0] == (
        f"genvisor: port {port} on 127.0.0.1 is in use — by another program; "
        "choose another with --port or GENVISOR_PORT"
    )
    assert refused.stderr.splitlines()[1] == "heavy: []"
    # Nothing was left holding the folder: a server starts there at once.
    with running_server(tmp_path) as server:
        assert httpx.get(f"{server.url}/healthz").status_code == 200
