"""Faults at the edges: the outputs folder read-only then full, hostile requests, and a
WebSocket client that stops reading while 10,000 events flow."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from drill_env import SMALL, DrillError, Server
from drill_report import FaultResult
from drill_stalled_client import StalledClient

__all__ = ["hostile_requests", "output_full", "output_read_only", "stalled_websocket"]


def _outputs(srv: Server) -> set[str]:
    return {p.name for p in (srv.home / "outputs").iterdir()}


def _fs_fault(srv: Server, result: FaultResult, broken: contextlib.AbstractContextManager[Any],
              fix: Any) -> None:  # fmt: skip
    before = _outputs(srv)
    with broken:
        job = srv.submit(SMALL)
        failed_at = time.monotonic()
        done = srv.wait_job(job)
        error = done["data"].get("error") or {}
        leftovers = sorted(_outputs(srv) - before - set(fix.keep))
        fix()
        fixed_at = time.monotonic()
        after = srv.submit(SMALL)
        ok = srv.wait_job(after)
        video = srv.http.get(f"/v1/jobs/{after}/output")
    result.jobs_accepted += 2
    result.jobs_lost += len(srv.lost_jobs([job, after], limit=5))
    result.recovery_s = time.monotonic() - fixed_at
    code = error.get("code", "-")
    result.observed = (
        f"{done['type']} {code} after {fixed_at - failed_at:.1f}s, partial files: "
        f"{leftovers or 'none'}; once fixed next job {ok['type']}, video {video.status_code}"
    )
    if done["type"] != "job.failed" or not str(code).startswith("FS."):
        result.fail(f"expected job.failed with FS.*, got {done['type']} {code}")
    if leftovers:
        result.fail(f"partial files left: {leftovers}")
    if ok["type"] != "job.succeeded" or video.status_code != 200:
        result.fail("the job after the fix did not succeed")
    result.survived = not result.notes


class _Unfreeze:
    keep: tuple[str, ...] = ()

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def __call__(self) -> None:
        subprocess.run(["chattr", "-i", str(self.folder)], check=True)


@contextlib.contextmanager
def _immutable(folder: Path) -> Iterator[None]:
    # As root, permissions do not stop writes; the immutable attribute does.
    subprocess.run(["chattr", "+i", str(folder)], check=True)
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=False)


def output_read_only(srv: Server, result: FaultResult) -> None:
    folder = srv.home / "outputs"
    _fs_fault(srv, result, _immutable(folder), _Unfreeze(folder))


class _MakeRoom:
    keep = ("filler",)

    def __init__(self, filler: Path) -> None:
        self.filler = filler

    def __call__(self) -> None:
        self.filler.unlink()


@contextlib.contextmanager
def _full_tmpfs(folder: Path) -> Iterator[None]:
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "drill-full", str(folder)],
                   check=True)  # fmt: skip
    try:
        fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            with contextlib.suppress(OSError):  # ENOSPC: the folder is full
                while True:
                    os.write(fd, b"\0" * 4096)
        finally:
            os.close(fd)
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def output_full(srv: Server, result: FaultResult) -> None:
    folder = srv.home / "outputs"
    _fs_fault(srv, result, _full_tmpfs(folder), _MakeRoom(folder / "filler"))


# -- hostile requests ------------------------------------------------------------------------

_HUGE = "y" * 100_000


def _hostile() -> list[tuple[str, str, dict[str, Any]]]:
    """200 requests that must all be refused without a 5xx and without queueing anything."""
    jobs = "/v1/jobs"
    out: list[tuple[str, str, dict[str, Any]]] = []
    raw = [b"{not json", b"", b"[]", b"null", b"1", b'"prompt"', b"{" * 5000, b"\xff\xfe\x00",
           b'{"prompt": "a", }', b'{"prompt": "a"', b"{'prompt': 'a'}",
           b'{"prompt": NaN}']  # fmt: skip
    for body in raw:
        for kind in ("application/json", "text/plain", "application/x-www-form-urlencoded"):
            out.append(("POST", jobs, {"content": body, "headers": {"content-type": kind}}))
    bad_values: dict[str, list[Any]] = {
        "width": [-16, 0, 15, 33, 4112, 2**70, -(2**70), 1.5, "33", "wide", [32], {"a": 1}, True],
        "height": [-32, 0, 8, 100, 99999, "tall", [], 3.2],
        "frames": [0, -1, 6, 2000, "many", 1.0e9, [5]],
        "steps": [0, -5, 1001, 10**12, "-2", {"n": 2}],
        "seed": [-1, 2**64, "x", 1.5],
        "guidance": [-1, 51, "high", float("1e308")],
        "fps": [0, 121, "999"],
        "priority": [11, -11, "max"],
        "model": ["../../etc/passwd", "..", "/abs/path", "a/b", "no-such-model", "x" * 65,
                  "tiny-wan\x00", "<script>", 5, "tiny-wan/x"],
        "negative_prompt": [_HUGE[:20001], 5, ["a"]],
        "allow_output_changes": ["maybe", [1]],
    }  # fmt: skip
    for field, values in bad_values.items():
        for value in values:
            out.append(("POST", jobs, {"json": {**SMALL, field: value}}))
    script = "<script>alert(1)</script>"
    for extra in ({"width": -16}, {"frames": 6}, {"unknown": 1}, {"model": script},
                  {"prompt": script * 200}, {"steps": "<img src=x onerror=alert(1)>"}):  # fmt: skip
        out.append(("POST", jobs, {"json": {**SMALL, "prompt": script, **extra}}))
    for prompt in ("", " ", "\t\n", _HUGE, "x" * 2001, 5, None, ["a"], {"a": 1}):
        out.append(("POST", jobs, {"json": {**SMALL, "prompt": prompt}}))
    for extra in ({"__proto__": {}}, {"output_path": "/etc/passwd"}, {"id": "../x"},
                  {"options": {"device": "cuda"}}, {"status": "succeeded"}):  # fmt: skip
        out.append(("POST", jobs, {"json": {**SMALL, **extra}}))
    out.append(("POST", jobs, {"json": {"width": 32}}))
    out.append(("POST", jobs, {"content": b"x" * 300_000,
                               "headers": {"content-type": "application/json"}}))  # fmt: skip
    for path in (
        "../../etc/passwd",
        "%2e%2e%2fjobs.sqlite3",
        "x" * 300,
        "j..%2f..%2f",
        "%00",
        "..%5c..%5cwindows",
        "<script>",
        "j20260101000000000000000000",
    ):
        out += [("GET", f"{jobs}/{path}", {}), ("GET", f"{jobs}/{path}/output", {}),
                ("POST", f"{jobs}/{path}/cancel", {})]  # fmt: skip
    for path in ("..%2f..%2fetc", "%2e%2e", "<b>x</b>", "a" * 200, "tiny-wan%00"):
        out += [("POST", f"/v1/models/{path}/verify", {}), ("POST", f"/v1/models/{path}/pull", {})]
    for method, path in (("PUT", jobs), ("DELETE", jobs), ("PATCH", jobs), ("GET", "/v1/jobs/"),
                         ("DELETE", f"{jobs}/x"), ("GET", "/v1/supervisor/reset"),
                         ("PUT", "/v1/state"), ("POST", "/v1/state"), ("POST", "/healthz"),
                         ("GET", "/v1/events"), ("GET", "/v1/events?since=-1"),
                         ("GET", "/../../etc/passwd"), ("GET", "/v1/nothing"),
                         ("TRACE", jobs), ("OPTIONS", jobs), ("POST", "/v1/models")):  # fmt: skip
        out.append((method, path, {}))
    for query in ("limit=0", "limit=-1", "limit=100000", "offset=-1", f"offset={2**70}",
                  "status=bogus", "status=<script>", "limit=abc", "offset=1e9"):  # fmt: skip
        out.append(("GET", f"{jobs}?{query}", {}))
    out.append(("POST", "/v1/supervisor/reset", {}))  # not halted: 409
    for token in ("Bearer x", "Basic Zm9vOmJhcg==", "Bearer " + "a" * 5000):
        auth = {"Authorization": token}
        out.append(("POST", jobs, {"json": {**SMALL, "frames": 2}, "headers": auth}))
    for value in (0, -1, 3, 7, 1026, 4.5, "17"):
        out.append(("POST", jobs, {"json": {**SMALL, "frames": value, "width": -1}}))
    out.append(("POST", "/v1/models/tiny-wan/verify?deep=perhaps", {}))
    for path in (
        "/v1/jobs/%2e%2e/%2e%2e/config",
        "/outputs/x.mp4",
        "/v1/../v1/state",
        "/v1/jobs?status=queued&status=failed",
        "/v1/models/%252e%252e/verify",
        "/docs/../../etc/passwd",
        "/v1/jobs/" + "%41" * 500,
        "/v1/events?since=1e99",
    ):
        out.append(("GET", path, {}))
    return out[:200]


def hostile_requests(srv: Server, result: FaultResult) -> None:
    requests = _hostile()
    if len(requests) != 200:
        raise DrillError(f"the hostile set has {len(requests)} requests, not 200")
    counts = srv.http.get("/v1/jobs", params={"limit": 1}).json()["counts"]
    mark = srv.events().mark()
    statuses: dict[int, int] = {}
    five: list[str] = []
    for method, path, kw in requests:
        try:
            r = srv.http.request(method, path, timeout=10, **kw)
        except httpx.TransportError as exc:  # a refusal by closing is not a 5xx
            statuses[-1] = statuses.get(-1, 0) + 1
            if srv.proc is not None and srv.proc.poll() is not None:
                five.append(f"{method} {path[:40]} -> server died ({type(exc).__name__})")
            continue
        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
        if r.status_code >= 500:
            five.append(f"{method} {path[:40]} -> {r.status_code}")
    after = srv.http.get("/v1/jobs", params={"limit": 1}).json()["counts"]
    queued = [e for e in srv.events().events[mark:] if e["type"] == "job.queued"]
    alive = srv.http.get("/readyz").status_code == 200
    result.observed = (
        f"{len(requests)} requests: "
        + ", ".join(f"{n}x{s}" for s, n in sorted(statuses.items()))
        + f"; queued {len(queued)}; still ready: {alive}"
    )
    if five:
        result.fail(f"5xx: {five[:5]}")
    if after != counts or queued:
        result.fail(f"jobs changed: {counts} -> {after}, {len(queued)} queued events")
    if not alive:
        result.fail("not ready after the hostile requests")
    result.survived = not result.notes


# -- the stalled WebSocket client ----------------------------------------------------------

FLOOD = {**SMALL, "width": 16, "height": 16, "frames": 1, "steps": 1000}


def stalled_websocket(srv: Server, result: FaultResult, events: int = 10_000) -> None:
    """One client stops reading while `events` events flow; the reading client (the drill's own
    feed) must get every one of them in order, the stalled one a `bus.lagged` notice and the
    missed range on replay with `?since=`."""
    feed = srv.events()
    first_seq = feed.last_seq
    stalled = StalledClient(srv.port, since=first_seq)
    began = time.monotonic()
    ids = [srv.submit(FLOOD) for _ in range(-(-events // FLOOD["steps"]))]
    for job in ids:
        srv.wait_job(job, limit=120)
    flow_s = time.monotonic() - began
    last_seq = feed.last_seq
    got = stalled.drain()
    stalled.close()
    reader = [e["seq"] for e in feed.events if first_seq < e["seq"] <= last_seq]
    in_order = reader == list(range(first_seq + 1, last_seq + 1))
    lagged = [e for e in got if e["type"] == "bus.lagged"]
    seen = {e["seq"] for e in got if e["type"] != "bus.lagged"}
    replayed: set[int] = set()
    for notice in lagged:
        since = notice["data"]["resume_from"] - 1
        replay = StalledClient(srv.port, since=since, rcvbuf=1 << 20, stall=False)
        stop = since + notice["data"]["dropped"]
        replayed |= {e["seq"] for e in replay.drain(quiet=1.0) if e["seq"] <= stop}
        replay.close()
    missing = set(range(first_seq + 1, last_seq + 1)) - seen - replayed
    lost = srv.lost_jobs(ids, limit=5)
    result.jobs_accepted += len(ids)
    result.jobs_lost += len(lost)
    result.events_unannounced += len(feed.unannounced)
    dropped = sum(n["data"]["dropped"] for n in lagged)
    result.observed = (
        f"{last_seq - first_seq} events in {flow_s:.1f}s; reader got {len(reader)} in order="
        f"{in_order}, lagged {len(feed.lagged)}; stalled got {len(seen)} + {len(lagged)} "
        f"bus.lagged (dropped {dropped}), replayed {len(replayed)}, missing {len(missing)}"
    )
    if last_seq - first_seq < events:
        result.fail(f"only {last_seq - first_seq} events flowed")
    if not in_order or feed.lagged:
        result.fail("the reading client missed events or lagged")
    if not lagged:
        result.fail("the stalled client never got bus.lagged")
    if missing:
        result.fail(f"{len(missing)} events neither received nor replayed")
    result.survived = not result.notes
