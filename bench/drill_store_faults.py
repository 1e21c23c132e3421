"""The drill's damaged-store faults (issue 13): the event journal and the jobs database damaged
on disk, while stopped and while running; and the replay helpers that check a client's view of
event numbers (every number accounted for, none given to two different events)."""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import tempfile
import time
from contextlib import closing
from pathlib import Path

from drill_env import SMALL, DrillError, Event, Server, cli
from drill_report import FaultResult
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

__all__ = [
    "damaged_jobs_db",
    "damaged_journal",
    "job_ok",
    "read_from",
    "numbers_reused",
    "unaccounted",
]


def job_ok(srv: Server, result: FaultResult) -> str:
    """Submit a small job and wait for its end; a failure is noted on the row."""
    job = srv.submit(SMALL)
    result.jobs_accepted += 1
    done = srv.wait_job(job)
    if done["type"] != "job.succeeded":
        result.fail(f"job {job} ended {done['type']}")
    return str(done["type"])


def read_from(srv: Server, since: int, until: int, limit: float = 30.0) -> list[Event]:
    """Frames of `?since=` until one numbered `until` or more; a dropped socket is a DrillError."""
    frames: list[Event] = []
    deadline = time.monotonic() + limit
    try:
        with connect(f"{srv.ws_url}/v1/events?since={since}", open_timeout=10,
                     max_size=2**24) as ws:  # fmt: skip
            while not frames or frames[-1]["seq"] < until:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DrillError(f"replay from {since} stopped short of {until}")
                frames.append(json.loads(ws.recv(timeout=left)))
    except ConnectionClosed as exc:
        raise DrillError(f"replay from {since} dropped the socket ({exc})") from None
    return frames


def unaccounted(frames: list[Event], after: int) -> int:
    """Numbers after `after` that no event or gap marker covers, in order, exactly once."""
    covered, missing = after, 0
    for f in frames:
        first = f["data"]["from_seq"] if f["type"] == "bus.gap" else f["seq"]
        if first > covered + 1:
            missing += first - covered - 1
        covered = max(covered, f["seq"])
    return missing


def numbers_reused(events: list[Event]) -> list[int]:
    """Numbers under which this client got two different events."""
    first: dict[int, Event] = {}
    return sorted({e["seq"] for e in events if first.setdefault(e["seq"], e) != e})


def _garble(path: Path, at: float, size: int) -> None:
    with path.open("r+b") as f:
        f.seek(int(path.stat().st_size * at))
        f.write(os.urandom(size))


def _damaged_copies(home: Path, name: str) -> set[Path]:
    return {p for p in home.glob(f"{name}.damaged-*") if not p.name.endswith(("-wal", "-shm"))}


def _readable_jobs(copy: Path, ids: list[str]) -> set[str]:
    """The jobs SQLite itself still reads from the damaged copy (looked up by id and by rowid),
    through a scratch copy so that the kept file is never opened for writing."""
    with tempfile.TemporaryDirectory(prefix="drill-damaged-") as tmp:
        scratch = Path(tmp) / "jobs.sqlite3"
        for suffix in ("", "-wal"):
            if Path(f"{copy}{suffix}").exists():
                shutil.copyfile(f"{copy}{suffix}", f"{scratch}{suffix}")
        found: set[str] = set()
        with closing(sqlite3.connect(scratch)) as db:
            lookups = (("SELECT id FROM jobs WHERE id = ?", ids),
                       ("SELECT id FROM jobs WHERE rowid = ?", range(1, 4 * len(ids))))  # fmt: skip
            for query, keys in lookups:
                for key in keys:
                    try:
                        row = db.execute(query, (key,)).fetchone()
                    except sqlite3.DatabaseError:
                        continue
                    if row and row[0] in ids:
                        found.add(row[0])
    return found


def _account(srv: Server, result: FaultResult, copy: Path, ids: list[str]) -> str:
    """Jobs that the damage destroyed (not readable from the kept copy) are the fault's; a job
    SQLite still reads there but the healed server lost (or changed) is genvisor's loss."""
    kept = {j for j in ids if srv.http.get(f"/v1/jobs/{j}").status_code == 200}
    readable = _readable_jobs(copy, ids)
    wrong = [j for j in kept if srv.job(j)["status"] != "succeeded"]
    lost = sorted((readable - kept) | set(wrong))
    result.jobs_lost += len(lost)
    if lost:
        result.fail(f"readable in the damaged copy, lost or changed by the heal: {lost}")
    destroyed = len(set(ids) - kept - readable)
    return f"{len(kept)}/{len(ids)} jobs kept, {destroyed} on damaged pages"


def _degraded_reason(srv: Server, key: str) -> str:
    ready = srv.http.get("/readyz")
    reason = ready.json().get("degraded_reasons", {}).get(key, "")
    if ready.status_code != 200:
        raise DrillError(f"/readyz {ready.status_code} after the heal: {ready.text[:300]}")
    return str(reason)


def damaged_jobs_db(srv: Server, result: FaultResult) -> None:
    """Garbage at 50 % of a stopped jobs database, then the file cut in half under the running
    server (after a checkpoint from another connection); each start heals it."""
    db = srv.home / "jobs.sqlite3"
    srv.start()
    ids = [srv.submit(SMALL) for _ in range(8)]
    result.jobs_accepted += len(ids)
    for job in ids:
        srv.wait_job(job)
    srv.stop()
    _garble(db, 0.5, 4096)
    began = time.monotonic()
    srv.start()
    srv.wait_serving()
    result.recovery_s = time.monotonic() - began
    reason = _degraded_reason(srv, "store:jobs")
    (copy,) = _damaged_copies(srv.home, "jobs.sqlite3")
    stopped = _account(srv, result, copy, ids)
    state = cli("state", "--url", srv.url, env=srv.process_env())
    told = "DEGRADED" in state.stdout and "the jobs database was damaged" in state.stdout
    ids.append(srv.submit(SMALL))
    result.jobs_accepted += 1
    first = srv.wait_job(ids[-1])["type"]
    if not reason.startswith("the jobs database was damaged; moved to ") or str(copy) not in reason:
        result.fail(f"degraded reason: {reason!r}")
    if not told or first != "job.succeeded":
        result.fail(f"genvisor state said DEGRADED+reason: {told}; next job {first}")

    with closing(sqlite3.connect(db)) as other:
        other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    os.truncate(db, db.stat().st_size // 2)
    answer = srv.http.get("/v1/jobs")
    code = answer.json().get("code") if answer.status_code == 503 else answer.status_code
    ready = srv.http.get("/readyz")
    named = any("jobs database is damaged" in r for r in ready.json().get("reasons", []))
    if code != "STORE.CORRUPTED" or ready.status_code != 503 or not named:
        result.fail(f"running damage: /v1/jobs {code}, /readyz {ready.status_code}")
    srv.stop()
    stopped_with = srv.proc.returncode if srv.proc else None
    srv.start()
    srv.wait_serving()
    again = _damaged_copies(srv.home, "jobs.sqlite3") - {copy}
    healed = _degraded_reason(srv, "store:jobs")
    running = _account(srv, result, next(iter(again)), ids) if len(again) == 1 else "no copy"
    ids.append(srv.submit(SMALL))
    result.jobs_accepted += 1
    last = srv.wait_job(ids[-1])["type"]
    result.observed = (
        f"stopped+garbage: DEGRADED in {result.recovery_s:.1f}s, '{reason.split(';')[-1].strip()}'"
        f", {stopped}, state says so {told}, next job {first}; running+truncated: /v1/jobs 503 "
        f"{code}, /readyz {ready.status_code}, stop exit {stopped_with}; restart: "
        f"'{healed.split(';')[-1].strip()}', {running}, next job {last}"
    )
    if len(again) != 1 or not healed.startswith("the jobs database was damaged"):
        result.fail(f"the restart after the running damage: copies {sorted(map(str, again))}")
    if last != "job.succeeded":
        result.fail(f"the job after the restart ended {last}")
    result.survived = not result.notes


def damaged_journal(srv: Server, result: FaultResult) -> None:
    """Garbage over three pages at 50 % of a stopped events.sqlite3: DEGRADED with the reason,
    the copy kept, a replay from 0 answers the lost range with `damaged` gap markers and never
    a different event under a number the client had."""
    feed = srv.events()
    ids = srv.accepted[:]
    seen = list(feed.events)
    srv.stop()
    _garble(srv.home / "events.sqlite3", 0.5, 12288)
    began = time.monotonic()
    srv.start()
    srv.wait_serving()
    result.recovery_s = time.monotonic() - began
    reason = _degraded_reason(srv, "store:journal")
    copies = _damaged_copies(srv.home, "events.sqlite3")
    now = srv.state()["bus"]["last_seq"]
    replay = read_from(srv, 0, now)
    markers = [f["data"] for f in replay if f["type"] == "bus.gap"]
    damaged = [m for m in markers if m["reason"] == "damaged"]
    lost = sum(m["to_seq"] - m["from_seq"] + 1 for m in damaged)
    result.events_unannounced += unaccounted(replay, 0)
    counted = re.search(r"(\d+) of (\d+) events recovered", reason)
    said = f"{int(counted[2]) - int(counted[1])} lost" if counted else "no count"
    changed = numbers_reused(seen + [f for f in replay if f["type"] != "bus.gap"])
    still = [j for j in ids if srv.job(j)["status"] != "succeeded"]
    next_job = job_ok(srv, result)
    result.observed = (
        f"DEGRADED in {result.recovery_s:.1f}s: '{reason.split(';')[-1].strip()}'; replay "
        f"0..{now}: {len(replay)} frames, {len(damaged)} damaged gap(s) = {lost} numbers (the "
        f"reason says {said}), socket "
        f"kept; numbers reused {len(changed)}; {len(ids) - len(still)}/{len(ids)} jobs intact; "
        f"next job {next_job}"
    )
    if not reason.startswith("the events database was damaged; moved to ") or len(copies) != 1:
        result.fail(f"reason {reason!r}, copies {sorted(map(str, copies))}")
    if not damaged:
        result.fail("no bus.gap with reason damaged in the replay")
    if changed:
        result.fail(f"numbers given to different events: {changed[:5]}")
    if still:
        result.jobs_lost += len(still)
        result.fail(f"jobs changed by the journal damage: {still}")
    result.survived = not result.notes
