"""The fault drill's environment: `genvisor serve` processes, an event-reading WebSocket client,
and the ledger of accepted jobs. Everything talks to genvisor from outside: HTTP, WebSocket,
the CLI, signals and files, as an operator would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.server_process import GENVISOR, free_port

ROOT = Path(__file__).resolve().parents[1]
TERMINAL = ("job.succeeded", "job.failed", "job.cancelled")
SMALL = {"prompt": "a paper boat on a pond", "width": 32, "height": 32, "frames": 5, "steps": 2}
# Minutes of denoising: always killed, stopped or cancelled long before it could finish.
LONG = {**SMALL, "width": 64, "height": 64, "frames": 9, "steps": 1000}

Event = dict[str, Any]


class DrillError(Exception):
    """A step of the drill did not see what it waited for."""


def say(message: str) -> None:
    print(f"[drill {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class EventFeed:
    """One client that reads `/v1/events` all the time, in a thread; it reconnects with
    `?since=<last seq>` when the server goes away, so a restart costs it nothing. It counts the
    seq numbers it never saw that no `bus.lagged` or `bus.gap` notice announced."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.events: list[Event] = []
        self.last_seq = 0
        self.unannounced: list[tuple[int, int]] = []
        self.lagged: list[Event] = []
        self.gaps: list[Event] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="event-feed")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                url = f"{self.server.ws_url}/v1/events?since={self.last_seq}"
                with connect(url, open_timeout=5, max_size=2**24) as ws:
                    while not self._stop.is_set():
                        try:
                            raw = ws.recv(timeout=0.5)
                        except TimeoutError:
                            continue
                        self._take(json.loads(raw))
            except (OSError, ConnectionClosed, TimeoutError):
                self._stop.wait(0.2)

    def _take(self, event: Event) -> None:
        with self._cond:
            seq = int(event["seq"])
            if event["type"] == "bus.lagged":
                self.lagged.append(event)
                self.last_seq = max(self.last_seq, seq + int(event["data"]["dropped"]))
            elif event["type"] == "bus.gap":
                # An announced gap (a restart's unused numbers, retention, a damaged range);
                # "ahead": the server numbers below what this client saw, so follow it.
                self.gaps.append(event)
                ahead = event["data"]["reason"] == "ahead"
                self.last_seq = seq if ahead else max(self.last_seq, seq)
            else:
                if seq > self.last_seq + 1:
                    self.unannounced.append((self.last_seq + 1, seq - 1))
                if seq > self.last_seq:
                    self.last_seq = seq
                self.events.append(event)
            self._cond.notify_all()

    def mark(self) -> int:
        with self._cond:
            return len(self.events)

    def wait(self, match: Callable[[Event], bool], what: str, *, start: int = 0,
             limit: float = 60.0) -> Event:  # fmt: skip
        """The first event from index `start` on that matches; DrillError after `limit` s."""
        deadline = time.monotonic() + limit
        with self._cond:
            i = start
            while True:
                while i < len(self.events):
                    if match(self.events[i]):
                        return self.events[i]
                    i += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DrillError(f"timed out after {limit:.0f}s waiting for {what}")
                self._cond.wait(left)

    def of_job(self, job_id: str, *types: str) -> list[Event]:
        with self._cond:
            return [e for e in self.events
                    if e["type"] in types and e["data"].get("job_id") == job_id]  # fmt: skip

    def transition_to(self, state: str, start: int, limit: float = 60.0) -> Event:
        return self.wait(
            lambda e: e["type"] == "supervisor.transition" and e["data"]["to"] == state,
            f"the supervisor to reach {state}", start=start, limit=limit,
        )  # fmt: skip

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


@dataclass
class Server:
    """A `genvisor serve` over its own data directory, on a free loopback port."""

    name: str
    home: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    feed: EventFeed | None = None
    accepted: list[str] = field(default_factory=list)
    http: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.url, timeout=30)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def process_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GENVISOR_", "HF_"))}
        env.update({"GENVISOR_HOME": str(self.home), "GENVISOR_LOG_FORMAT": "json",
                    "HF_HOME": str(self.home / "hf_home"), **self.env})  # fmt: skip
        return env

    def start(self, limit: float = 60.0) -> None:
        """Start the process, return once /healthz answers (the feed follows events from then)."""
        log = (self.home / "serve.log").open("ab")
        self.proc = subprocess.Popen(
            [GENVISOR, "serve", "--port", str(self.port)],
            env=self.process_env(), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DrillError(f"{self.name}: serve exited with {self.proc.returncode}")
            try:
                if self.http.get("/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        else:
            raise DrillError(f"{self.name}: serve did not answer within {limit:.0f}s")
        if self.feed is None:
            self.feed = EventFeed(self)

    def events(self) -> EventFeed:
        assert self.feed is not None
        return self.feed

    def wait_serving(self, limit: float = 60.0) -> float:
        """Seconds until /readyz says ready (or degraded) with a worker process running."""
        began = time.monotonic()
        while time.monotonic() - began < limit:
            try:
                ready = self.http.get("/readyz", timeout=2).status_code == 200
                if ready and self.worker_pid() is not None:
                    return time.monotonic() - began
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise DrillError(f"{self.name}: not serving after {limit:.0f}s: {self.state_brief()}")

    def state(self) -> dict[str, Any]:
        return dict(self.http.get("/v1/state").json())

    def state_brief(self) -> str:
        try:
            s = self.state()
        except (httpx.HTTPError, ValueError) as exc:
            return f"no state ({type(exc).__name__})"
        return f"{s.get('state')} {s.get('degraded_reasons') or ''}"

    def worker_pid(self) -> int | None:
        for child in self.state().get("children", []):
            if child.get("id") == "generator" and child.get("pid"):
                return int(child["pid"])
        return None

    def submit(self, body: dict[str, Any]) -> str:
        r = self.http.post("/v1/jobs", json=body)
        if r.status_code != 202:
            raise DrillError(f"{self.name}: job refused with {r.status_code}: {r.text[:300]}")
        job_id: str = r.json()["id"]
        self.accepted.append(job_id)
        return job_id

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.http.get(f"/v1/jobs/{job_id}").json())

    def wait_job(self, job_id: str, limit: float = 60.0, start: int = 0) -> Event:
        return self.events().wait(
            lambda e: e["type"] in TERMINAL and e["data"].get("job_id") == job_id,
            f"job {job_id} to finish", start=start, limit=limit,
        )  # fmt: skip

    def wait_step(self, job_id: str, step: int = 1, start: int = 0, limit: float = 60.0) -> Event:
        return self.events().wait(
            lambda e: e["type"] == "job.progress" and e["data"]["job_id"] == job_id
            and e["data"]["stage"] == "denoise" and (e["data"].get("step") or 0) >= step,
            f"job {job_id} at denoise step {step}", start=start, limit=limit,
        )  # fmt: skip

    def cancel(self, job_id: str) -> None:
        self.http.post(f"/v1/jobs/{job_id}/cancel")

    def lost_jobs(self, ids: list[str], limit: float = 60.0) -> list[str]:
        """Accepted jobs that never reached a terminal state, or reached one twice."""
        lost = []
        deadline = time.monotonic() + limit
        for job_id in ids:
            try:
                self.wait_job(job_id, limit=max(0.1, deadline - time.monotonic()))
            except DrillError:
                lost.append(job_id)
                continue
            if len(self.events().of_job(job_id, *TERMINAL)) > 1:
                lost.append(job_id)
        return lost

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def close(self) -> None:
        self.stop()
        if self.feed is not None:
            self.feed.close()
        self.http.close()


def cli(*args: str, env: dict[str, str], limit: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run the `genvisor` CLI as a person would."""
    return subprocess.run([GENVISOR, *args], env=env, capture_output=True, text=True,
                          timeout=limit, check=False)  # fmt: skip
