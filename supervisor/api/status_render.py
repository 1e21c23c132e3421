"""The status page's HTML, rendered on the server: the shell the script fills live, the state
machine drawn as inline SVG from the transition table, and (when no token is set) the current
figures, so the page says something before its script runs.

Invariant: every string that comes from a job, an error or an event goes through `html.escape`
(`_e`); the page's script likewise writes data with ``textContent`` only.
"""

from __future__ import annotations

import datetime as dt
import math
from html import escape
from typing import Any

from supervisor.core.states import State
from supervisor.supervision.state_machine import TRANSITIONS

__all__ = ["render_page", "state_graph_svg"]

# Columns and rows of each state in the drawing; a state not listed goes to a spare row.
_LAYOUT: dict[State, tuple[int, int]] = {
    State.STARTING: (0, 1),
    State.READY: (1, 0),
    State.DEGRADED: (1, 2),
    State.FAILED: (2, 1),
    State.CATEGORIZING: (3, 1),
    State.RECOVERING: (4, 0),
    State.HALTED: (4, 2),
    State.STOPPING: (5, 1),
    State.STOPPED: (6, 1),
}
_DX, _DY, _W, _H, _PAD = 120, 78, 100, 30, 20
_BEND = 16.0


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _centre(state: State) -> tuple[float, float]:
    spare = list(State).index(state)
    col, row = _LAYOUT.get(state, (spare % 7, 3))
    return _PAD + col * _DX + _W / 2, _PAD + row * _DY + _H / 2


def _border(x: float, y: float, dx: float, dy: float) -> tuple[float, float]:
    """The point where the ray from the centre (x, y) along (dx, dy) leaves the node's box."""
    scale = min(
        (_W / 2 + 3) / abs(dx) if dx else math.inf, (_H / 2 + 3) / abs(dy) if dy else math.inf
    )
    return x + dx * scale, y + dy * scale


def _edge(src: State, dst: State, trigger: str) -> str:
    (x1, y1), (x2, y2) = _centre(src), _centre(dst)
    dx, dy = x2 - x1, y2 - y1
    length = math.hypot(dx, dy) or 1.0
    # Bend each edge to its left: the two directions of a pair separate.
    nx, ny = -dy / length * _BEND, dx / length * _BEND
    sx, sy = _border(x1, y1, dx + nx, dy + ny)
    ex, ey = _border(x2, y2, -dx + nx, -dy + ny)
    cx, cy = (x1 + x2) / 2 + nx, (y1 + y2) / 2 + ny
    kind = "edge stop" if dst in (State.STOPPING, State.STOPPED) else "edge"
    return (
        f'<path class="{kind}" data-from="{src.value}" data-to="{dst.value}" '
        f'd="M{sx:.1f},{sy:.1f} Q{cx:.1f},{cy:.1f} {ex:.1f},{ey:.1f}" marker-end="url(#arrow)">'
        f"<title>{_e(trigger)}: {src.value} → {dst.value}</title></path>"
    )


def state_graph_svg(current: State | None) -> str:
    """The supervisor's machine: one box per state, one arrow per (source, destination) of the
    transition table, the current state marked (class ``current``)."""
    edges = [
        _edge(src, dst, trigger.value) for trigger, sources, dst in TRANSITIONS for src in sources
    ]
    nodes = []
    for state in State:
        x, y = _centre(state)
        mark = " current" if state is current else ""
        nodes.append(
            f'<g class="node state-{state.value}{mark}" data-state="{state.value}">'
            f'<rect x="{x - _W / 2:.0f}" y="{y - _H / 2:.0f}" width="{_W}" height="{_H}" rx="8"/>'
            f'<text x="{x:.0f}" y="{y + 5:.0f}" text-anchor="middle">{state.value}</text></g>'
        )
    cols = max(c for c, _ in _LAYOUT.values()) + 1
    rows = max(r for _, r in _LAYOUT.values()) + 1
    width, height = 2 * _PAD + (cols - 1) * _DX + _W, 2 * _PAD + (rows - 1) * _DY + _H
    return (
        f'<svg id="state-graph" class="graph" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="the supervisor state machine">'
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="7" '
        'markerHeight="7" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z"/></marker>'
        f"</defs>{''.join(edges)}{''.join(nodes)}</svg>"
    )


def _clock(ts: float | None) -> str:
    if not ts:
        return ""
    return dt.datetime.fromtimestamp(ts).strftime("%H:%M:%S")


def _children_rows(children: list[dict[str, Any]]) -> str:
    rows = []
    for c in children:
        last = c.get("last_error") or {}
        rows.append(
            f'<tr data-child="{_e(c["id"])}"><td>{_e(c["id"])}</td><td>{_e(c["state"])}</td>'
            f"<td>{_e(c.get('status', ''))}</td>"
            f"<td>{_e(c['restarts_in_window'])}/{_e(c['max_restarts'])}</td>"
            f"<td>{_e(c.get('pid') or '')}</td>"
            f"<td>{_e(last.get('message', '')) if last else ''}</td></tr>"
        )
    return "".join(rows)


def _job_rows(jobs: list[dict[str, Any]]) -> str:
    rows = []
    for job in jobs:
        changes = "; ".join(str(c.get("text", "")) for c in job.get("changes") or [])
        rows.append(
            f'<tr data-job="{_e(job["id"])}"><td class="id">{_e(job["id"])}</td>'
            f'<td class="status">{_e(job["status"])}</td>'
            f'<td class="prompt">{_e(job["params"].get("prompt", ""))}</td>'
            f'<td class="progress"></td><td class="attempts">{_e(job.get("attempts", ""))}</td>'
            f'<td class="changes">{_e(changes)}</td><td class="video"></td></tr>'
        )
    return "".join(rows)


def _failure(failure: dict[str, Any] | None) -> str:
    if not failure:
        return '<p class="none">No failure since the start.</p>'
    items = "".join(f"<li>{_e(s)}</li>" for s in failure.get("suggestions", []))
    return (
        f'<p class="title">{_e(failure.get("title", ""))} <code>{_e(failure.get("code", ""))}'
        f"</code> <time>{_e(_clock(failure.get('ts')))}</time></p>"
        f'<p class="message">{_e(failure.get("message", ""))}</p><ul class="suggestions">'
        f"{items}</ul>"
    )


def render_page(*, base: str, data: dict[str, Any] | None, token_required: bool) -> str:
    """The whole page. `data` is the status (``/v1/status``) or None when a token guards it:
    then the page shows nothing but the token form until the script has the token."""
    dump = (data or {}).get("state") or {}
    state = dump.get("state")
    current = State(str(state)) if state in State._value2member_map_ else None
    hidden = " hidden" if token_required else ""
    since = f"since {_clock(dump.get('since'))}" if dump else ""
    degraded = "".join(
        f"<li>{_e(k)}: {_e(v)}</li>" for k, v in (dump.get("degraded_reasons") or {}).items()
    )
    walk = "".join(
        f'<li data-to="{_e(h["to_state"])}">{_e(_clock(h["ts"]))} {_e(h["from_state"])} → '
        f"{_e(h['to_state'])} ({_e(h['trigger'])}) {_e(h.get('error_code') or '')} "
        f"{_e(h.get('reason', ''))}</li>"
        for h in (dump.get("history") or [])[-12:]
    )
    jobs = (data or {}).get("jobs") or []
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>genvisor status</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{_e(base)}/status/assets/status.css">
<script src="{_e(base)}/status/assets/status.js" defer></script>
</head>
<body data-base="{_e(base)}" data-token="{"required" if token_required else "none"}">
<header><h1>genvisor</h1><span id="conn" class="conn">connecting…</span>
<span id="lagged" class="lagged" hidden></span></header>
<form id="token-form" class="token"{"" if token_required else " hidden"}>
<label>API token <input id="token-input" type="password" autocomplete="off" required></label>
<button type="submit">Open</button><p id="token-error" class="error"></p></form>
<main id="main"{hidden}>
<section class="overview"><div id="state" class="state state-{_e(state or "unknown")}">
{_e((state or "…").upper())}</div><span id="since">{_e(since)}</span>
<ul id="degraded" class="degraded">{degraded}</ul><p id="readiness"></p></section>
<section><h2>State machine</h2>{state_graph_svg(current)}
<h3>Recent transitions</h3><ol id="walk" class="walk">{walk}</ol></section>
<section><h2>Last failure</h2><div id="failure">{_failure((data or {}).get("last_failure"))}
</div></section>
<section><h2>Children</h2><table id="children"><thead><tr><th>child</th><th>state</th>
<th>status</th><th>restarts</th><th>pid</th><th>last error</th></tr></thead>
<tbody>{_children_rows(dump.get("children") or [])}</tbody></table></section>
<section class="wide"><h2>Jobs</h2><p id="queue"></p><table id="jobs"><thead><tr><th>job</th>
<th>status</th><th>prompt</th><th>progress</th><th>attempts</th><th>changes</th><th>video</th></tr></thead>
<tbody>{_job_rows(jobs)}</tbody></table></section>
<section><h2>Device memory</h2><svg id="memory-chart" class="chart" viewBox="0 0 600 120"
role="img" aria-label="device memory used over the last minutes"></svg>
<p id="memory-now"></p><p id="pressure"></p>
<h3>Learned strategies</h3><table id="learned"><thead><tr><th>model</th><th>device</th>
<th>memory</th><th>size bucket</th><th>starts at</th><th>successes</th></tr></thead><tbody>
</tbody></table></section>
<section class="wide"><h2>Events</h2><label>type <select id="event-filter">
<option value="-vram.sample">all but vram.sample</option><option value="">all</option>
</select></label><ol id="events" class="events"></ol></section>
</main></body></html>
"""
