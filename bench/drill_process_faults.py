"""Process faults: the worker killed (until the supervisor halts), the worker hung, and the
whole server killed with jobs queued and running."""

from __future__ import annotations

import os
import signal
import time

from drill_env import SMALL, TERMINAL, DrillError, Server, cli
from drill_report import FaultResult

__all__ = ["server_kill", "worker_hang", "worker_kills"]

# A few seconds of denoising at one step per event: long enough to be caught mid-denoise,
# short enough to finish once retried.
STEADY = {**SMALL, "width": 16, "height": 16, "frames": 1, "steps": 250}


def _finished(srv: Server, ids: list[str], result: FaultResult, limit: float = 90.0) -> None:
    lost = srv.lost_jobs(ids, limit=limit)
    result.jobs_accepted += len(ids)
    result.jobs_lost += len(lost)
    if lost:
        result.fail(f"jobs never finished or finished twice: {lost}")


def _status(srv: Server, job_id: str) -> str:
    return str(srv.job(job_id)["status"])


def worker_kills(srv: Server, result: FaultResult) -> None:
    """SIGKILL the worker mid-denoise three times (restarted each time, the job retried), then a
    fourth time within worker_restart_period: halted, refusing jobs; reset; serving again."""
    feed = srv.events()
    ids: list[str] = []
    recoveries: list[float] = []
    for round_ in range(1, 5):
        job = srv.submit(STEADY)
        queued_behind = srv.submit(SMALL)
        ids += [job, queued_behind]
        start = feed.mark()
        srv.wait_step(job, 3)
        pid = srv.worker_pid()
        if pid is None:
            raise DrillError("no worker pid in /v1/state")
        mark, killed_at = feed.mark(), time.monotonic()
        os.kill(pid, signal.SIGKILL)
        if round_ < 4:
            crash = feed.transition_to("failed", mark)
            if crash["data"]["error_code"] != "WORKER.CRASHED":
                result.fail(f"kill {round_} categorized as {crash['data']['error_code']}")
            feed.transition_to("ready", mark)
            recoveries.append(time.monotonic() - killed_at)
            retry = srv.events().wait(
                lambda e, j=job: e["type"] == "job.retrying" and e["data"]["job_id"] == j,
                f"job {job} to be retried", start=start,
            )  # fmt: skip
            if retry["data"]["error_code"] != "WORKER.CRASHED":
                result.fail(f"retry {round_} said {retry['data']['error_code']}")
            srv.wait_job(job, limit=60)
            srv.wait_job(queued_behind, limit=60)
        else:
            feed.transition_to("halted", mark)
    refused = srv.http.post("/v1/jobs", json=SMALL)
    if refused.status_code != 503:
        result.fail(f"halted server answered {refused.status_code} to a new job, not 503")
    reset_at = time.monotonic()
    reset = cli("reset", "--url", srv.url, env=srv.process_env())
    if reset.returncode != 0:
        raise DrillError(f"genvisor reset failed: {reset.stderr.strip()}")
    srv.wait_serving()
    recoveries.append(time.monotonic() - reset_at)
    after = srv.submit(SMALL)
    ids.append(after)
    _finished(srv, ids, result)
    statuses = [_status(srv, j) for j in ids]
    bad = [f"{j}={s}" for j, s in zip(ids, statuses, strict=True) if s != "succeeded"]
    result.recovery_s = max(recoveries)
    result.observed = (
        f"3 restarts ({', '.join(f'{t:.1f}s' for t in recoveries[:3])}), 4th kill -> halted, "
        f"new job 503, reset -> serving in {recoveries[3]:.1f}s; "
        f"{statuses.count('succeeded')}/{len(ids)} jobs succeeded"
    )
    if bad:
        result.fail(f"not succeeded: {bad}")
    else:
        result.survived = not result.notes


def worker_hang(srv: Server, result: FaultResult) -> None:
    """SIGSTOP the worker mid-denoise: no heartbeat -> WORKER.HUNG, killed, restarted, the job
    retried to success (server runs with a short stall_timeout)."""
    feed = srv.events()
    job = srv.submit(STEADY)
    behind = srv.submit(SMALL)
    start = feed.mark()
    srv.wait_step(job, 3, start=0)
    pid = srv.worker_pid()
    if pid is None:
        raise DrillError("no worker pid in /v1/state")
    mark, stopped_at = feed.mark(), time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        failed = feed.transition_to("failed", mark, limit=30)
        feed.transition_to("ready", mark)
        recovered = time.monotonic() - stopped_at
    finally:
        try:  # the supervisor should have killed it; if not, do not leave it stopped
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    code = failed["data"]["error_code"]
    retry = feed.wait(
        lambda e: e["type"] == "job.retrying" and e["data"]["job_id"] == job,
        "the hung job to be retried", start=start,
    )  # fmt: skip
    _finished(srv, [job, behind], result)
    statuses = [_status(srv, job), _status(srv, behind)]
    result.recovery_s = recovered
    result.observed = (
        f"{code}, worker killed and restarted in {recovered:.1f}s, job retried "
        f"({retry['data']['error_code']}) -> {statuses[0]}; queued job -> {statuses[1]}"
    )
    if code != "WORKER.HUNG":
        result.fail(f"categorized as {code}")
    if statuses != ["succeeded", "succeeded"]:
        result.fail(f"statuses {statuses}")
    result.survived = not result.notes


def server_kill(srv: Server, result: FaultResult) -> None:
    """SIGKILL the control process with one job running and three queued; start it again on
    the same data directory: every job completes, none twice, the old worker gone."""
    feed = srv.events()
    ids = [srv.submit(STEADY)] + [srv.submit(SMALL) for _ in range(3)]
    srv.wait_step(ids[0], 3)
    worker = srv.worker_pid()
    killed_at = time.monotonic()
    srv.kill()
    srv.start()
    srv.wait_serving()
    serving = time.monotonic() - killed_at
    _finished(srv, ids, result)
    done = time.monotonic() - killed_at
    statuses = [_status(srv, j) for j in ids]
    worker_gone = True
    if worker is not None:
        try:
            os.kill(worker, 0)
            worker_gone = False
        except ProcessLookupError:
            pass
    succeeded = [e for j in ids for e in feed.of_job(j, *TERMINAL)]
    outputs = sorted(p.name for p in (srv.home / "outputs").glob("*.mp4"))
    missing_out = [j for j in ids if f"{j}.mp4" not in outputs]
    result.recovery_s = serving
    result.observed = (
        f"restarted and serving in {serving:.1f}s; {statuses.count('succeeded')}/4 jobs "
        f"succeeded ({len(succeeded)} terminal events) by {done:.1f}s; old worker "
        f"{'gone' if worker_gone else 'STILL RUNNING'}"
    )
    if statuses != ["succeeded"] * 4:
        result.fail(f"statuses {statuses}")
    if missing_out:
        result.fail(f"no video for {missing_out}")
    if not worker_gone:
        result.fail(f"worker {worker} outlived its server")
    result.survived = not result.notes
