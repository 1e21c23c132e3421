"""Faults in genvisor's own foundations (issue 13): a second server on one data folder, hostile
WebSocket Origins and unencodable text, event numbers across a kill -9, the event journal and
the jobs database damaged on disk (those two in drill_store_faults). Real processes, real sockets,
real SQLite files damaged from outside; each row checks what genvisor did."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from drill_env import GENVISOR, SMALL, DrillError, Server
from drill_report import FaultResult, run_fault
from drill_store_faults import (
    damaged_jobs_db,
    damaged_journal,
    job_ok,
    numbers_reused,
    read_from,
    unaccounted,
)
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Origin

from tests.server_process import free_port

__all__ = ["run_foundation_faults"]

STEADY = {**SMALL, "width": 16, "height": 16, "frames": 1, "steps": 250}
ERROR_KEYS = {"code", "category", "severity", "title", "message", "suggestions", "technical"}


def _wait_exit(proc: subprocess.Popen[str], limit: float = 30.0) -> tuple[int, str, float]:
    began = time.monotonic()
    try:
        _, err = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise DrillError(f"a second serve did not exit within {limit:.0f}s") from None
    return proc.returncode, err.strip(), time.monotonic() - began


def _second_serve(srv: Server, home: Path, port: int) -> tuple[int, str, float]:
    """`genvisor serve` beside the running one: exit code, stderr, seconds to refusal."""
    env = {**srv.process_env(), "GENVISOR_HOME": str(home)}
    proc = subprocess.Popen([GENVISOR, "serve", "--port", str(port)], env=env, text=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    return _wait_exit(proc)


def second_server(srv: Server, result: FaultResult) -> None:
    """A second serve on the same folder (another port, the same port) and one on another folder
    but the same port, or a port another program holds: each exits 1 at once with its refusal
    (on the same folder the only line); the first server keeps serving. The seconds each refusal
    took are a figure, not a threshold."""
    feed = srv.events()
    mark = feed.mark()
    other = srv.home.parent / f"{srv.home.name}-other"
    pid = srv.proc.pid if srv.proc else "?"
    owner = f"genvisor: another genvisor (pid {pid}, serving {srv.url}"
    held = f"genvisor: port {srv.port} on 127.0.0.1 is in use — a genvisor answers there; "
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        foreign = squatter.getsockname()[1]
        cases = [
            ("same folder, other port", srv.home, free_port(), owner),
            ("same folder, same port", srv.home, srv.port, owner),
            ("other folder, same port", other, srv.port, held),
            ("other folder, port of another program", other, foreign,
             f"genvisor: port {foreign} on 127.0.0.1 is in use — by another program; "),
        ]  # fmt: skip
        times, logged = [], 0
        for what, home, port, start in cases:
            code, err, took = _second_serve(srv, home, port)
            times.append(took)
            # The refusal is the last line. On the same folder it is the only one (the lock comes
            # first); on another folder, start-up's log records may come before the port check.
            *before, last = err.splitlines() or [""]
            logged += len(before)
            if code != 1 or not last.startswith(start) or (home == srv.home and before):
                result.fail(f"{what}: exit {code}, stderr {err[:300]!r}")
            elif home == srv.home and f"uses the data folder {srv.home}" not in last:
                result.fail(f"{what}: the line does not name the folder: {last!r}")
            elif not all(line.startswith('{"ts"') for line in before):
                result.fail(f"{what}: more than a refusal on stderr: {before[:3]}")
    ready = srv.http.get("/readyz")
    kept = job_ok(srv, result)
    left = [e["data"]["to"] for e in feed.events[mark:] if e["type"] == "supervisor.transition"]
    result.recovery_s = max(times)
    result.observed = (
        f"4 second serves refused, exit 1, refusal line (+{logged} log lines), in "
        f"{', '.join(f'{t:.1f}s' for t in times)}; first server /readyz {ready.status_code}, "
        f"transitions {left or 'none'}, next job {kept}; the other folder got "
        f"{sorted(p.name for p in other.iterdir() if p.suffix == '.sqlite3')} before its refusal"
    )
    if ready.status_code != 200 or left:
        result.fail(f"the first server was disturbed: /readyz {ready.status_code}, {left}")
    result.survived = not result.notes


# -- hostile Origins and text ----------------------------------------------------------------

JSON = {"content-type": "application/json"}
SURROGATES = (
    rb'{"prompt": "\ud800", "width": 32, "height": 32, "frames": 5, "steps": 2}',
    rb'{"prompt": "a boat", "model": "\udfff"}',
    rb'{"prompt": "a boat", "negative_prompt": "blur \ud800 x"}',
    rb'{"prompt": "a boat", "\ud800": 1}',
    rb'{"prompt": "a boat", "extra": "\udbff\udbff"}',
)
NOT_UTF8 = (b'{"prompt": "\xff"}', b"\x80", b"\xef\xbf\xbd\xc8\x9bm\xff")


def hostile_origin_text(srv: Server, result: FaultResult) -> None:
    """Malformed WebSocket Origins (403, no traceback in the server's log), bad `?since=` (closed
    1008 with a reason), lone surrogates in every string field and an extra key (422 error
    JSON), bodies that are not UTF-8 (400 error JSON); nothing queued, still ready."""
    log = srv.home / "serve.log"
    log_at = log.stat().st_size
    counts = srv.http.get("/v1/jobs", params={"limit": 1}).json()["counts"]
    origins = ["http://[::1", "http://a:99999", f"http://127.0.0.1:{srv.port}.evil.example", "null"]
    refused: dict[str, int | str] = {}
    for origin in origins:
        try:
            with connect(f"{srv.ws_url}/v1/events", origin=Origin(origin), open_timeout=10):
                refused[origin] = "accepted"
        except InvalidStatus as exc:
            refused[origin] = exc.response.status_code
    closes = []
    for since in ("-1", "abc", "1e30"):
        try:
            with connect(f"{srv.ws_url}/v1/events?since={since}", open_timeout=10) as ws:
                ws.recv(timeout=10)
            closes.append(f"{since}: open")
        except ConnectionClosed as exc:
            rcvd = exc.rcvd
            if rcvd is None or rcvd.code != 1008 or not rcvd.reason:
                closes.append(f"{since}: {rcvd}")
        except InvalidStatus as exc:
            closes.append(f"{since}: {exc.response.status_code}")
    bodies = [(raw, 422) for raw in SURROGATES] + [(raw, 400) for raw in NOT_UTF8]
    wrong = []
    for raw, want in bodies:
        r = srv.http.post("/v1/jobs", content=raw, headers=JSON)
        try:
            body = r.json() if r.headers.get("content-type") == "application/json" else {}
        except ValueError:
            body = {}
        if r.status_code != want or not ERROR_KEYS <= body.keys():
            wrong.append(f"{raw[:40]!r} -> {r.status_code} {r.text[:80]!r}")
    after = srv.http.get("/v1/jobs", params={"limit": 1}).json()["counts"]
    ready = srv.http.get("/readyz").status_code
    with log.open("rb") as f:
        f.seek(log_at)
        logged = f.read().decode("utf-8", "replace")
    tracebacks = logged.count("Traceback")
    result.observed = (
        f"Origins -> {sorted(set(map(str, refused.values())))}; bad since closed 1008 with a "
        f"reason {3 - len(closes)}/3; {len(SURROGATES)} surrogate bodies -> 422, "
        f"{len(NOT_UTF8)} non-UTF-8 -> 400 (wrong: {len(wrong)}); tracebacks logged "
        f"{tracebacks}; queued {sum(after.values()) - sum(counts.values())}; /readyz {ready}"
    )
    bad = {o: s for o, s in refused.items() if s != 403}
    if bad:
        result.fail(f"Origins not refused with 403: {bad}")
    if closes:
        result.fail(f"bad since: {closes}")
    if wrong:
        result.fail(f"bodies: {wrong[:4]}")
    if tracebacks:
        result.fail(f"{tracebacks} tracebacks in the log")
    if after != counts or ready != 200:
        result.fail(f"jobs {counts} -> {after}, /readyz {ready}")
    result.survived = not result.notes


def seq_after_kill(srv: Server, result: FaultResult) -> None:
    """kill -9 while progress events flow; restart on the same home; resume from the last seq
    seen: no number names two events, the dead run's unused numbers are a `restart` gap."""
    feed = srv.events()
    gaps_before, unannounced_before = len(feed.gaps), len(feed.unannounced)
    job = srv.submit(STEADY)
    result.jobs_accepted += 1
    srv.wait_step(job, 40)
    killed_at = time.monotonic()
    srv.kill()
    last_seen = feed.last_seq
    seen = {e["seq"]: e for e in feed.events}
    srv.start()
    srv.wait_serving()
    result.recovery_s = time.monotonic() - killed_at
    result.jobs_lost += len(srv.lost_jobs([job], limit=90))
    now = srv.state()["bus"]["last_seq"]
    resumed = read_from(srv, last_seen, now)
    markers = [f for f in resumed if f["type"] == "bus.gap"]
    changed = [f["seq"] for f in resumed if f["seq"] in seen and f != seen[f["seq"]]]
    reused = numbers_reused(feed.events)
    restart = [m for m in markers if m["data"]["reason"] == "restart"]
    feed_restart = [g for g in feed.gaps[gaps_before:] if g["data"]["reason"] == "restart"]
    result.events_unannounced += unaccounted(resumed, last_seen)
    # (The live client's own unannounced gaps are counted once, by the drill, per server.)
    silent = feed.unannounced[unannounced_before:]
    gap = restart[0]["data"] if restart else {}
    result.observed = (
        f"last seen {last_seen}; resume: {len(resumed)} frames, restart gap "
        f"{gap.get('from_seq')}..{gap.get('to_seq')}, numbers reused {len(changed) + len(reused)}"
        f"; live client got {len(feed_restart)} restart gap(s); job {srv.job(job)['status']}"
    )
    if not restart or not feed_restart:
        result.fail("no bus.gap with reason restart after the kill")
    if silent:
        result.fail(f"the live client missed numbers unannounced: {silent[:5]}")
    if changed or reused:
        result.fail(f"numbers given to different events: {(changed + reused)[:5]}")
    if srv.job(job)["status"] != "succeeded":
        result.fail(f"the interrupted job is {srv.job(job)['status']}")
    result.survived = not result.notes


# -- the rows --------------------------------------------------------------------------------


def run_foundation_faults(make_server: Callable[[str], Server],
                          servers: list[Server]) -> list[FaultResult]:  # fmt: skip
    """The foundation rows, on their own servers: `make_server(name)` gives one over a fresh
    home (not started); the drill closes every server in `servers`."""
    results: list[FaultResult] = []
    found = make_server("foundation")
    servers.append(found)
    found.start()
    found.wait_serving()
    for fault, expected, body in (
        ("second serve on one data folder / port", "exit 1 at once, one line; first serves",
         second_server),
        ("hostile WS Origin, surrogates, non-UTF-8", "403 no traceback; 422/400 error JSON",
         hostile_origin_text),
        ("server SIGKILL mid-publish, resume since", "no seq reused; bus.gap restart; job ok",
         seq_after_kill),
        ("event journal garbled while stopped", "DEGRADED store:journal; gap 'damaged'",
         damaged_journal),
    ):  # fmt: skip
        results.append(run_fault(FaultResult(fault, expected), lambda r, b=body: b(found, r)))
    found.close()
    jobs = make_server("jobs-db")
    servers.append(jobs)
    results.append(run_fault(
        FaultResult("jobs.sqlite3 garbled stopped / cut running",
                    "DEGRADED store:jobs; 503 STORE.CORRUPTED; heals (damaged pages' jobs lost)"),
        lambda r: damaged_jobs_db(jobs, r)))  # fmt: skip
    jobs.close()
    return results
