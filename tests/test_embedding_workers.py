"""The README's host app (tests/embedding_host.py) served by `uvicorn --workers 3`: one worker
process owns the runtime (GENVISOR_HOME's lock), the others forward genvisor's routes and the
WebSocket to it over its Unix socket; when the owner is killed, a follower takes over.

Real processes, real sockets: uvicorn spreads fresh connections over its workers, and every
genvisor answer names the process that took the connection (`x-genvisor-served-by`)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from supervisor.api.forwarding import SERVED_BY, SOCKET_NAME, socket_path
from supervisor.core.exceptions import HomeInUse
from supervisor.core.home_lock import LOCK_NAME, HomeLock
from supervisor.core.settings import load_settings
from supervisor.runtime import Runtime
from tests.runtime_harness import make_home
from tests.server_process import free_port, server_env

REPO = Path(__file__).resolve().parent.parent
SMALL = {"prompt": "a kite over a beach", "width": 32, "height": 32, "frames": 5, "steps": 2}
STARTED = "Application startup complete."
TOKEN = "a-token-for-every-worker"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TAKEOVER = re.compile(r"this process \(pid (\d+)\) takes over")


@dataclass
class Log:
    """A process's stderr, read by a thread; `wait` blocks on new lines, with a deadline."""

    lines: list[str] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def pump(self, stream: Any) -> None:
        for line in stream:
            with self.changed:
                self.lines.append(line)
                self.changed.notify_all()

    def wait(self, found: Callable[[list[str]], Any], what: str, limit: float = 120.0) -> Any:
        deadline = time.monotonic() + limit
        with self.changed:
            while not (result := found(self.lines)):
                left = deadline - time.monotonic()
                if left <= 0:
                    tail = "".join(self.lines[-40:])
                    raise AssertionError(f"no {what} within {limit:g} s; log:\n{tail}")
                self.changed.wait(left)
            return result


@dataclass
class Host:
    proc: subprocess.Popen[str]
    port: int
    log: Log

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/genvisor"

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        """One request on a fresh connection (uvicorn hands each to one of its workers)."""
        headers = {"Connection": "close", **AUTH, **kw.pop("headers", {})}
        with httpx.Client(timeout=60) as client:
            return client.request(method, f"{self.url}{path}", headers=headers, **kw)

    def started(self, count: int) -> None:
        self.log.wait(lambda lines: sum(STARTED in line for line in lines) >= count, STARTED)


@pytest.fixture
def host(tmp_path: Path, tiny_model: Path) -> Iterator[Host]:
    home = make_home(tmp_path, tiny_model)
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "tests.embedding_host:app", "--workers", "3"]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(
        command,
        env=server_env(home, PYTHONPATH=str(REPO), GENVISOR_API_TOKEN=TOKEN),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # the workers and their generation workers: one group
    )
    log = Log()
    threading.Thread(target=log.pump, args=(proc.stderr,), daemon=True).start()
    try:
        yield Host(proc=proc, port=port, log=log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything left of the group
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
        if proc.stderr is not None:
            proc.stderr.close()


def follow(host: Host, job_ids: set[str], limit: float = 180.0) -> tuple[str, dict[str, str]]:
    """Open the event stream on a fresh connection and read it until every job in `job_ids`
    ended; return the process that took the connection and each job's end."""
    ends: dict[str, str] = {}
    deadline = time.monotonic() + limit
    ws_url = f"ws://127.0.0.1:{host.port}/genvisor/v1/events?since=0"
    with connect(ws_url, open_timeout=30, additional_headers=AUTH) as ws:
        assert ws.response is not None
        served_by = ws.response.headers[SERVED_BY]
        while not job_ids <= ends.keys():
            left = deadline - time.monotonic()
            assert left > 0, f"jobs {job_ids - ends.keys()} did not end within {limit:g} s"
            event = json.loads(ws.recv(timeout=left))
            if event["type"] in ("job.succeeded", "job.failed"):
                ends[event["data"]["job_id"]] = event["type"]
    return served_by, ends


@contextlib.contextmanager
def stream_through_follower(host: Host, owner: int) -> Iterator[Any]:
    """An event stream whose connection a follower took (fresh connections until one does)."""
    for _ in range(30):
        url = f"ws://127.0.0.1:{host.port}/genvisor/v1/events"
        with connect(url, open_timeout=30, additional_headers=AUTH) as ws:
            assert ws.response is not None
            if ws.response.headers[SERVED_BY] != str(owner):
                yield ws
                return
    raise AssertionError("30 event streams in a row were taken by the owner's process")


def read_until_closed(ws: Any, limit: float = 60.0) -> ConnectionClosed:
    deadline = time.monotonic() + limit
    try:
        while (left := deadline - time.monotonic()) > 0:
            ws.recv(timeout=left)
    except ConnectionClosed as exc:
        return exc
    raise AssertionError(f"the stream stayed open for {limit:g} s")


def submit(host: Host) -> tuple[str, str]:
    r = host.request("POST", "/v1/jobs", json=SMALL)
    assert r.status_code == 202, r.text
    return r.json()["id"], r.headers[SERVED_BY]


def test_building_a_runtime_opens_nothing(tmp_path: Path) -> None:
    # Every worker process of a host builds one at import: none may lock or open anything.
    home = tmp_path / "home"
    runtime = Runtime(load_settings(overrides={"home": home}))
    assert not runtime.owns_home
    assert not (home / LOCK_NAME).exists()
    assert not home.exists() or not any(home.iterdir())  # no store, no lock file
    lock = HomeLock(home)
    lock.acquire()  # nobody else holds it
    lock.release()


def test_the_socket_lives_in_the_home_unless_its_path_is_too_long(tmp_path: Path) -> None:
    assert socket_path(tmp_path) == tmp_path / SOCKET_NAME
    deep = tmp_path / ("d" * 120)
    fallback = socket_path(deep)
    assert len(os.fsencode(fallback)) <= 107
    assert fallback == socket_path(deep / "x" / "..")  # one name for every process
    assert fallback != socket_path(tmp_path / ("e" * 120))


@pytest.mark.anyio
async def test_a_follower_takes_over_when_the_lock_is_released(tmp_path: Path) -> None:
    home = tmp_path / "home"
    settings = load_settings(overrides={"home": home})
    other = HomeLock(home)  # another process's lock (its own open file description)
    other.acquire()
    standalone = Runtime(settings, child_specs=[], share_home=False)
    with pytest.raises(HomeInUse):
        async with standalone.lifespan():
            pass
    runtime = Runtime(settings, child_specs=[])
    async with runtime.lifespan():
        assert not runtime.owns_home  # a follower: its routes forward
        other.release()  # the owner's process ends
        with anyio.fail_after(30):
            await runtime.wait_owner()
        assert runtime.owns_home
        assert runtime.home_lock.held
        with pytest.raises(HomeInUse):
            HomeLock(home).acquire()
    assert not runtime.owns_home
    assert not runtime.home_lock.held


@pytest.mark.slow
def test_one_owner_followers_forward_and_one_takes_over(host: Host) -> None:
    host.started(3)

    # State through many fresh connections: answered by several processes, always about one.
    served: set[str] = set()
    owners: set[int] = set()
    for _ in range(60):
        r = host.request("GET", "/v1/state")
        assert r.status_code == 200, r.text
        served.add(r.headers[SERVED_BY])
        owners.add(r.json()["pid"])
        if len(served) == 3:
            break
    assert len(owners) == 1, owners
    owner = owners.pop()
    assert len(served) >= 2, served  # answers came through more than one worker process
    assert owner != host.proc.pid  # a worker process, not uvicorn's parent

    # Jobs through every worker that takes a connection; all run in the owner.
    jobs: dict[str, str] = {}
    while len(jobs) < 6 and len(set(jobs.values())) < 3:
        job_id, by = submit(host)
        jobs[job_id] = by
    assert len(set(jobs.values())) >= 2, jobs

    # Event streams through several workers: each sees every job end, and end well.
    streams: set[str] = set()
    for _ in range(8):
        by, ends = follow(host, set(jobs))
        assert set(ends.values()) == {"job.succeeded"}, ends
        streams.add(by)
        if len(streams) >= 2:
            break
    assert len(streams) >= 2, streams

    # The output and a refused request, forwarded by a follower, untouched.
    job_id = next(iter(jobs))
    for _ in range(30):
        video = host.request("GET", f"/v1/jobs/{job_id}/output")
        if video.headers[SERVED_BY] != str(owner):
            break
    assert video.headers[SERVED_BY] != str(owner)
    assert video.status_code == 200
    assert video.headers["content-type"] == "video/mp4"
    assert video.content[4:8] == b"ftyp"
    for _ in range(30):
        bad = host.request("POST", "/v1/jobs", json={**SMALL, "frames": 6})
        if bad.headers[SERVED_BY] != str(owner):
            break
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "frames"

    # The token and the Origin hold whichever process takes the connection.
    wrong = {"Authorization": "Bearer no"}
    # Which process accepts a connection is the kernel's choice: ask until two have answered
    # (as for the state above), every answer a 401.
    refused: list[httpx.Response] = []
    for _ in range(60):
        refused.append(host.request("GET", "/v1/state", headers=wrong))
        if len({r.headers[SERVED_BY] for r in refused}) >= 2:
            break
    assert {r.status_code for r in refused} == {401}
    assert all(r.json()["title"] for r in refused)
    assert len({r.headers[SERVED_BY] for r in refused}) >= 2
    origins: list[InvalidStatus] = []
    for _ in range(10):
        with pytest.raises(InvalidStatus) as denied:
            connect(
                f"ws://127.0.0.1:{host.port}/genvisor/v1/events",
                open_timeout=30,
                additional_headers={**AUTH, "Origin": "http://evil.example"},
            )
        origins.append(denied.value)
    assert {d.response.status_code for d in origins} == {403}
    assert any(SERVED_BY in d.response.headers for d in origins)  # relayed by a follower

    state = host.request("GET", "/v1/state").json()
    old_worker = next(c for c in state["children"] if c["id"] == "generator")["pid"]

    # The owner dies while a follower relays an event stream from it: a follower takes the
    # lock and the runtime; uvicorn replaces the dead worker process.
    with stream_through_follower(host, owner) as relayed:
        os.kill(owner, signal.SIGKILL)
        closed = read_until_closed(relayed)
    assert closed.rcvd is not None
    assert closed.rcvd.code == 1012  # service restart: resume with ?since=
    match = host.log.wait(
        lambda lines: next((m for line in lines if (m := TAKEOVER.search(line))), None),
        "takeover",
    )
    new_owner = int(match.group(1))
    assert new_owner != owner
    assert str(new_owner) in served  # it was a follower
    host.started(4)  # the replacement worker started (as a follower)

    job_id, _ = submit(host)
    _, ends = follow(host, {job_id})
    assert ends[job_id] == "job.succeeded"
    pids = {host.request("GET", "/v1/state").json()["pid"] for _ in range(10)}
    assert pids == {new_owner}
    with pytest.raises(ProcessLookupError):
        os.kill(owner, 0)
    # The dead owner's generation worker does not outlive it (its channel closed).
    if old_worker is not None:
        with contextlib.suppress(ProcessLookupError):
            pidfd = os.pidfd_open(old_worker)
            try:
                assert select.select([pidfd], [], [], 60)[0], "the old worker is still alive"
            finally:
                os.close(pidfd)
