"""`genvisor jobs list|show|cancel`: the jobs of a running server, for a person or a script."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Any
from urllib.parse import quote

from supervisor.cli.api_error_output import print_api_error, print_user_error
from supervisor.cli.generate_progress import change_text
from supervisor.cli.server_client import add_url_argument, request_json
from supervisor.jobs import JobStatus

__all__ = ["register"]

STATUS_STYLE = {
    JobStatus.SUCCEEDED: "green",
    JobStatus.FAILED: "red",
    JobStatus.CANCELLED: "yellow",
    JobStatus.INTERRUPTED: "yellow",
    JobStatus.RUNNING: "cyan",
    JobStatus.RETRYING: "cyan",
    JobStatus.QUEUED: "dim",
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("jobs", help="list, show or cancel the jobs of the running server")
    actions = p.add_subparsers(dest="jobs_action", metavar="ACTION", required=True)

    ls = actions.add_parser("list", help="jobs, newest first")
    ls.add_argument("--status", choices=[s.value for s in JobStatus], help="only this status")
    ls.add_argument("--limit", type=int, default=50, help="at most this many (1-500)")
    ls.add_argument("--json", action="store_true", help="print the answer as JSON")
    add_url_argument(ls)
    ls.set_defaults(func=run_list)

    show = actions.add_parser("show", help="one job: status, progress, attempts, error")
    show.add_argument("job_id", metavar="ID")
    show.add_argument("--json", action="store_true", help="print the job as JSON")
    add_url_argument(show)
    show.set_defaults(func=run_show)

    cancel = actions.add_parser("cancel", help="cancel a waiting or running job")
    cancel.add_argument("job_id", metavar="ID")
    add_url_argument(cancel)
    cancel.set_defaults(func=run_cancel)


def _job_path(job_id: str) -> str:
    # The id is data, never a path: quoted so that "../x" stays one path segment.
    return f"/v1/jobs/{quote(job_id, safe='')}"


def run_list(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit}
    if args.status:
        params["status"] = args.status
    code, body = request_json(args, "GET", "/v1/jobs", params=params)
    if code != 200:
        print_api_error(code, body)
        return 1
    if args.json:
        print(json.dumps(body, indent=2, sort_keys=True))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title_justify="left")
    # An id is what a person copies into `jobs show`: it is never wrapped or shortened.
    table.add_column(
        "id", no_wrap=True, min_width=max((len(j["id"]) for j in body["jobs"]), default=2)
    )
    for column in ("status", "model", "size", "steps", "tries", "created"):
        table.add_column(column)
    for job in body["jobs"]:
        p = job["params"]
        status = JobStatus(job["status"])
        table.add_row(
            job["id"],
            f"[{STATUS_STYLE[status]}]{status.value}[/]",
            job["model"],
            f"{p['width']}x{p['height']}x{p['num_frames']}",
            str(p["steps"]),
            str(job["attempts"]),
            _when(job["created_ts"]),
        )
    console = Console(highlight=False)
    console.print(table)
    counts = ", ".join(f"{k} {v}" for k, v in sorted(body.get("counts", {}).items()) if v)
    console.print(f"{len(body['jobs'])} shown" + (f"  ·  all: {counts}" if counts else ""))
    return 0


def _when(ts: float | None) -> str:
    if ts is None:
        return ""
    return dt.datetime.fromtimestamp(ts).strftime("%m-%d %H:%M:%S")


def _stamp(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def run_show(args: argparse.Namespace) -> int:
    code, job = request_json(args, "GET", _job_path(args.job_id))
    if code != 200:
        print_api_error(code, job)
        return 1
    if args.json:
        print(json.dumps(job, indent=2, sort_keys=True))
        return 0
    p = job["params"]
    print(f"job {job['id']}: {job['status']}")
    print(f"  model     {job['model']}")
    print(f"  prompt    {p['prompt']}")
    print(
        f"  size      {p['width']}x{p['height']}, {p['num_frames']} frames, {p['steps']} steps,"
        f" seed {p['seed']}, {p['fps']} fps"
    )
    print(f"  attempts  {job['attempts']}")
    if job.get("queue_position"):
        print(f"  queue     position {job['queue_position']}")
    progress = job.get("progress") or {}
    if job["status"] in ("running", "retrying") and progress.get("stage"):
        step = progress.get("step")
        total = progress.get("total_steps")
        # Between the steps of the denoising loop (loading, decoding) there is no step to show.
        steps = f" step {step}/{total}" if step is not None and total else ""
        print(f"  progress  {progress['stage']}{steps}")
    for change in job.get("changes") or []:
        print(f"  change    {change_text(change)}")
    print(f"  created   {_stamp(job['created_ts'])}")
    if job.get("finished_ts"):
        print(f"  finished  {_stamp(job['finished_ts'])}")
    if job["status"] == "succeeded":
        print(f"  video     GET {_job_path(job['id'])}/output")
    if job.get("error"):
        print_user_error(job["error"])
    return 0


def run_cancel(args: argparse.Namespace) -> int:
    code, job = request_json(args, "POST", f"{_job_path(args.job_id)}/cancel")
    if code != 202:
        print_api_error(code, job)
        return 1
    if job["status"] == "cancelled":
        print(f"job {job['id']} cancelled")
    else:
        print(f"job {job['id']} is {job['status']}: it stops at its next step")
    return 0
