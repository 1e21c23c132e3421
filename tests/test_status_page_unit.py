"""The status page's server side without a server: escaping, the drawn machine, the token a
browser sends as a WebSocket subprotocol, the last failure, and the Grafana dashboard."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from supervisor.api.http_api import build_router
from supervisor.api.metrics import METRIC_NAMES
from supervisor.api.status_page import (
    PAGE_CSP,
    chosen_subprotocol,
    last_failure,
    socket_token_valid,
)
from supervisor.api.status_render import render_page, state_graph_svg
from supervisor.core.settings import Settings
from supervisor.core.states import State
from supervisor.runtime import Runtime
from supervisor.supervision.state_machine import TRANSITIONS

DASHBOARD = Path(__file__).resolve().parents[1] / "docs" / "grafana-dashboard.json"
HOSTILE = "<img src=x onerror=alert(1)>"
TOKEN = "s3cret-token-of-the-test-0123"


def _status(prompt: str) -> dict[str, object]:
    job = {
        "id": "j1",
        "status": "failed",
        "params": {"prompt": prompt},
        "attempts": 1,
        "changes": [{"text": f"changed {prompt}"}],
        "finished_ts": 20.0,
        "error": {"code": "INPUT.INVALID", "title": prompt, "message": prompt, "ts": 20.0},
    }
    dump = {
        "state": "degraded",
        "since": 10.0,
        "degraded_reasons": {"model": prompt},
        "history": [
            {
                "from_state": "ready",
                "to_state": "failed",
                "trigger": "fail",
                "reason": prompt,
                "error_code": "WORKER.CRASHED",
                "ts": 10.0,
            }
        ],
        "children": [
            {
                "id": "generator",
                "state": "running",
                "status": "idle",
                "restarts_in_window": 1,
                "max_restarts": 3,
                "pid": 42,
                "last_error": {"type": "X", "message": prompt},
            }
        ],
    }
    return {"state": dump, "jobs": [job], "last_failure": last_failure(dump, [job])}


def test_every_string_from_jobs_and_errors_is_escaped_in_the_html() -> None:
    page = render_page(base="/g", data=_status(HOSTILE), token_required=False)
    assert "<img" not in page
    assert page.count("&lt;img src=x onerror=alert(1)&gt;") >= 6
    assert 'src="/g/status/assets/status.js"' in page
    # No inline script or style: the CSP forbids them.
    assert re.search(r"<script(?![^>]*\bsrc=)", page) is None
    assert "style=" not in page
    assert "'unsafe-inline'" not in PAGE_CSP
    assert "default-src 'self'" in PAGE_CSP


def test_with_a_token_the_html_carries_no_data() -> None:
    page = render_page(base="", data=None, token_required=True)
    assert 'data-token="required"' in page
    assert '<main id="main" hidden>' in page
    assert "<tbody></tbody>" in page


def test_the_machine_is_drawn_from_the_transition_table() -> None:
    svg = state_graph_svg(State.RECOVERING)
    pairs = {(s.value, d.value) for _, sources, d in TRANSITIONS for s in sources}
    drawn = set(re.findall(r'data-from="([a-z]+)" data-to="([a-z]+)"', svg))
    assert drawn == pairs
    assert re.findall(r'class="node state-(\w+) current"', svg) == ["recovering"]
    assert {m for m in re.findall(r'data-state="([a-z]+)"', svg)} == {s.value for s in State}


def test_the_last_failure_is_the_latest_of_walk_and_job() -> None:
    status = _status("boom")
    failure = status["last_failure"]
    assert isinstance(failure, dict)
    assert failure["job_id"] == "j1"
    assert failure["title"] == "boom"
    dump = status["state"]
    assert isinstance(dump, dict)
    walk_only = last_failure(dump, [])
    assert walk_only is not None
    assert walk_only["code"] == "WORKER.CRASHED"
    assert walk_only["title"] == "The generation worker stopped"
    assert walk_only["message"] == "boom"
    assert 0 < len(walk_only["suggestions"]) <= 7
    assert last_failure({"history": []}, []) is None


def test_a_browser_sends_the_token_as_a_subprotocol_and_never_gets_it_back() -> None:
    settings = Settings(api_token=SecretStr(TOKEN))
    encoded = base64.urlsafe_b64encode(TOKEN.encode()).decode().rstrip("=")
    offered = ["genvisor.v1", f"genvisor.bearer.{encoded}"]
    assert socket_token_valid(settings, {}, offered)
    assert socket_token_valid(settings, {"authorization": f"Bearer {TOKEN}"}, [])
    assert not socket_token_valid(settings, {}, ["genvisor.v1"])
    assert not socket_token_valid(settings, {}, ["genvisor.v1", "genvisor.bearer.d3Jvbmc"])
    assert not socket_token_valid(settings, {}, ["genvisor.bearer.%%%"])
    assert socket_token_valid(Settings(), {}, [])
    assert chosen_subprotocol(offered) == "genvisor.v1"
    assert chosen_subprotocol([]) is None


def test_the_grafana_dashboard_uses_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs
    used = {
        re.sub(r"_(bucket|sum|count)$", "", name)
        for expr in exprs
        for name in re.findall(r"\bgenvisor_[a-z_]+", expr)
    }
    assert used <= set(METRIC_NAMES), used - set(METRIC_NAMES)
    assert used == set(METRIC_NAMES), set(METRIC_NAMES) - used


def test_under_an_embedding_prefix_the_page_and_its_assets_carry_the_prefix(
    tmp_path: Path,
) -> None:
    settings = Settings(api_token=SecretStr(TOKEN), home=tmp_path)
    host = FastAPI()
    host.include_router(build_router(Runtime(settings, share_home=False)), prefix="/genvisor")
    client = TestClient(host)
    page = client.get("/genvisor/")
    assert page.status_code == 200
    assert page.headers["content-security-policy"] == PAGE_CSP
    assert 'data-base="/genvisor"' in page.text
    assert 'src="/genvisor/status/assets/status.js"' in page.text
    script = client.get("/genvisor/status/assets/status.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert "textContent" in script.text
    assert "innerHTML" not in script.text
    assert client.get("/genvisor/status/assets/..%2Fstatus_page.py").status_code == 404
    for guarded in ("/genvisor/metrics", "/genvisor/v1/status"):
        assert client.get(guarded).status_code == 401
