"""`genvisor state`: the state dump of a running server, for a person or a script."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Any

from supervisor.cli.server_client import add_url_argument, request_json

__all__ = ["register", "render_state"]

STATE_STYLE = {
    "ready": "bold green",
    "degraded": "bold yellow",
    "halted": "bold red",
    "failed": "red",
    "categorizing": "yellow",
    "recovering": "yellow",
    "starting": "cyan",
    "stopping": "dim",
    "stopped": "dim",
}


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("state", help="show the supervisor's state (a running server's)")
    add_url_argument(p)
    form = p.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="print the state as JSON")
    form.add_argument("--graph", action="store_true", help="print the machine as Mermaid")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    code, body = request_json(args, "GET", "/v1/state")
    if code != 200:
        print(f"genvisor: the server answered {code}: {body.get('detail', body)}")
        return 1
    if args.json:
        print(json.dumps(body, indent=2, sort_keys=True))
    elif args.graph:
        from supervisor.supervision.state_machine import State, mermaid_diagram

        print(mermaid_diagram(State(body["state"])))
    else:
        render_state(body)
    return 0


def _ago(ts: float, now: float) -> str:
    seconds = max(0.0, now - ts)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def render_state(body: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    now = dt.datetime.now().timestamp()
    state = body["state"]
    console.print(
        f"[{STATE_STYLE.get(state, 'bold')}]{state.upper()}[/] since {_ago(body['since'], now)}"
        f"  ·  genvisor {body.get('version', '?')}  ·  up {body.get('uptime_s', 0):.0f} s"
        f"  ·  pid {body.get('pid', '?')}"
    )
    for key, reason in body.get("degraded_reasons", {}).items():
        console.print(f"  [yellow]degraded[/]: {key}: {escape(reason)}")
    # The same verdict as /readyz: a state that reads READY with a part down is not ready.
    for reason in body.get("readiness", {}).get("reasons", []):
        console.print(f"  [red]not ready[/]: {escape(reason)}")
    failures = [h for h in body.get("history", []) if h["to_state"] == "failed"]
    if failures:
        last = failures[-1]
        code = f" [bold]{last['error_code']}[/]" if last.get("error_code") else ""
        console.print(
            f"  last failure {_ago(last['ts'], now)}:{code} {escape(_shorten(last['reason']))}"
        )

    children = Table(title="children", title_justify="left")
    for col in ("child", "state", "status", "restarts", "pid", "last error"):
        children.add_column(col)
    for c in body.get("children", []):
        last = c.get("last_error") or {}
        children.add_row(
            c["id"],
            c["state"],
            str(c.get("status", "")),
            f"{c['restarts_in_window']}/{c['max_restarts']} in {c['period_s']:g} s",
            str(c.get("pid") or ""),
            # The words, as the status page shows them: a class's dotted path is for `--json`.
            escape((last.get("message") or last.get("type", ""))[:80]) if last else "",
        )
    console.print(children)
    devices = body.get("devices", [])
    if len(devices) > 1:  # one device says nothing the children table does not
        table = Table(title="devices", title_justify="left")
        for col in ("device", "worker", "name", "memory limit", "in service", "running"):
            table.add_column(col)
        for d in devices:
            table.add_row(
                d["device"],
                d["worker"],
                escape(str(d.get("name") or "")),
                str(d.get("memory_limit") or "none"),
                "yes" if d.get("in_service", True) else "[red]no[/]",
                d.get("running") or "",
            )
        console.print(table)

    history = Table(title="recent transitions", title_justify="left")
    for col in ("when", "from", "to", "trigger", "code", "reason"):
        history.add_column(col)
    for h in body.get("history", [])[-10:]:
        history.add_row(
            _ago(h["ts"], now),
            h["from_state"],
            h["to_state"],
            h["trigger"],
            h.get("error_code") or "",
            escape(h["reason"][:70]),
        )
    console.print(history)
    learned = body.get("learned_strategies", [])
    if learned:
        table = Table(title="learned memory strategies", title_justify="left")
        for col in ("model", "device", "memory", "size bucket", "starts at", "successes"):
            table.add_column(col)
        for s in learned:
            table.add_row(
                s["model"],
                s["device"],
                f"{s['memory_mib']} MiB",
                str(s["size_bucket"]),
                s["rung"],
                str(s["successes"]),
            )
        console.print(table)
    bus = body.get("bus", {})
    queue = body.get("queue", {})
    console.print(
        "bus: "
        + ", ".join(f"{k} {v}" for k, v in bus.items() if v is not None)
        + "  ·  queue: "
        # Nothing running is said by leaving it out, never as "None".
        + ", ".join(f"{k} {v}" for k, v in queue.items() if v is not None)
    )


def _shorten(reason: str, limit: int = 240) -> str:
    """A long reason cut in its middle, never its end: the last sentence is what to do."""
    if len(reason) <= limit:
        return reason
    head, _, tail = reason.rpartition(". ")
    if not head or len(tail) > limit - 40:
        tail = reason[-(limit // 2) :]
    return f"{reason[: limit - len(tail) - 3].rstrip()} … {tail}"
