"""The status page in a real Chromium against a real `genvisor serve` (real tiny-Wan worker,
real memory cap, real kill -9): offline, live, and every job string shown as text.

One server for the module, under a 2 GiB cap so that a harbour-sized job really runs out of
memory at decode (it must be the first job: earlier jobs calibrate pre-flight). The tests run
in file order; each waits on page conditions, never on sleeps."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, expect
from prometheus_client.parser import text_string_to_metric_families

from tests.runtime_harness import make_home
from tests.server_process import ServerProcess, read_events_until, running_server
from tests.status_browser import chromium, kill_worker, opened, submit, worker_pid

pytestmark = pytest.mark.slow

DASHBOARD = Path(__file__).resolve().parents[1] / "docs" / "grafana-dashboard.json"
XSS = "<img src=x onerror=alert(1)>"
HARBOUR: dict[str, Any] = {
    "prompt": "a harbour at night",
    "width": 832,
    "height": 480,
    "frames": 17,
    "seed": 11,
}
# Many cheap steps: a second (idle machine) to tens of seconds of denoising, killed mid-job.
LONG: dict[str, Any] = {"prompt": "a long walk", "steps": 200}
WALK = "failed,categorizing,recovering,ready"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[ServerProcess]:
    home = make_home(tmp_path_factory.mktemp("status"), tiny_model)
    with running_server(home, GENVISOR_DEVICE_MEMORY_LIMIT="2GiB") as srv:
        yield srv


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


def test_page_loads_offline_shows_ready_the_machine_and_memory(
    browser: Browser, server: ServerProcess
) -> None:
    with opened(browser, server) as w:
        page = w.page
        # The server listens before its worker is up: the page follows it to READY live.
        expect(page.locator("#state")).to_have_text("READY", timeout=60_000)
        expect(page.locator("#conn")).to_have_text("live")
        expect(page.locator('#state-graph .node[data-state="ready"]')).to_have_class(
            re.compile(r"\bcurrent\b")
        )
        # Every edge of the transition table is drawn.
        assert page.locator("#state-graph path.edge").count() >= 20
        pid = worker_pid(server)
        expect(page.locator("#children tbody tr", has_text="generator")).to_contain_text(str(pid))
        expect(page.locator("#memory-chart polyline.used")).to_have_count(1)
        expect(page.locator("#memory-now")).to_contain_text("GiB used")
        expect(page.locator("#events li").first).to_be_visible()
        # The log's type filter: only transitions, then everything but the memory samples.
        page.select_option("#event-filter", "supervisor.transition")
        expect(page.locator("#events li")).not_to_have_count(0)
        expect(page.locator('#events li:not([data-type="supervisor.transition"])')).to_have_count(0)
        page.select_option("#event-filter", "-vram.sample")
        expect(page.locator('#events li[data-type="actor.started"]')).not_to_have_count(0)
        headers = httpx.get(server.url + "/").headers
        csp = headers["content-security-policy"]
        assert "default-src 'self'" in csp
        assert "unsafe-inline" not in csp
        w.shot("1-ready")
        w.assert_clean()


def test_memory_recovery_shows_its_sentence_and_the_walk(
    browser: Browser, server: ServerProcess
) -> None:
    with opened(browser, server) as w:
        page = w.page
        expect(page.locator("#conn")).to_have_text("live")
        job_id = submit(server, **HARBOUR)
        row = page.locator(f'#jobs tr[data-job="{job_id}"]')
        # A real out-of-memory at VAE decode, then the re-run with tiling, said in words.
        expect(row.locator("td.changes")).to_contain_text(
            "ran the VAE in tiles", timeout=90_000
        )
        page.wait_for_function(
            "() => [...document.querySelectorAll('#walk li')].map(li => li.dataset.to)"
            ".join(',').includes('failed,categorizing,recovering')",
            timeout=30_000,
        )
        expect(page.locator("#failure .title")).to_contain_text("memory")
        expect(row.locator("td.attempts")).to_have_text("2")
        w.shot("2-memory-recovery")
        # The tiled decode takes minutes on a busy CPU: cancelled, the next tests get the worker.
        httpx.post(f"{server.url}/v1/jobs/{job_id}/cancel", timeout=30)
        expect(row.locator("td.status")).to_have_text("cancelled", timeout=60_000)
        expect(page.locator("#state")).to_have_text(re.compile("READY|DEGRADED"), timeout=60_000)
        w.assert_clean()


def test_job_advances_plays_its_video_and_a_hostile_prompt_stays_text(
    browser: Browser, server: ServerProcess
) -> None:
    with opened(browser, server) as w:
        page = w.page
        expect(page.locator("#conn")).to_have_text("live")
        # What the progress cell showed, as the page showed it (not sampled by the test).
        page.evaluate(
            """() => { window.seen = [];
            new MutationObserver(() => document.querySelectorAll('#jobs td.progress')
                .forEach(td => window.seen.push(td.textContent)))
              .observe(document.getElementById('jobs'),
                       {subtree: true, childList: true, characterData: true}); }"""
        )
        job_id = submit(server, prompt=XSS, steps=40)
        row = page.locator(f'#jobs tr[data-job="{job_id}"]')
        expect(row.locator("td.status")).to_have_text("succeeded", timeout=60_000)
        seen = page.evaluate("window.seen")
        assert any(re.search(r"denoise · step \d+/40", s) for s in seen), seen
        expect(row.locator("td.prompt")).to_have_text(XSS)
        assert page.locator("#jobs img").count() == 0
        video = row.locator("video")
        expect(video).to_have_count(1)
        page.wait_for_function(
            "v => v.readyState >= 2 && v.duration > 0", arg=video.element_handle(), timeout=30_000
        )
        page.evaluate("v => v.play()", video.element_handle())
        page.wait_for_function("v => v.currentTime > 0", arg=video.element_handle())
        w.shot("3-job-played")
        # Rendered by the server this time (a reload): still text.
        page.reload()
        expect(row.locator("td.prompt")).to_have_text(XSS)
        assert "<img src=x" not in page.locator("#jobs").inner_html()
        w.assert_clean()


def test_worker_killed_mid_job_shows_the_walk_and_the_retry(
    browser: Browser, server: ServerProcess
) -> None:
    with opened(browser, server) as w:
        page = w.page
        expect(page.locator("#conn")).to_have_text("live")
        since = httpx.get(f"{server.url}/v1/state", timeout=30).json()["bus"]["last_seq"]
        job_id = submit(server, **LONG)
        # Killed the moment it denoises (read from the socket directly: the page's own
        # rendering must not decide how far the job gets before the kill).
        read_events_until(
            f"{server.ws_url}/v1/events?since={since}",
            lambda e: (
                e["type"] == "job.progress"
                and e["data"]["job_id"] == job_id
                and (e["data"]["step"] or 0) >= 1
            ),
        )
        killed = kill_worker(server)
        row = page.locator(f'#jobs tr[data-job="{job_id}"]')
        page.wait_for_function(
            "() => [...document.querySelectorAll('#walk li')].map(li => li.dataset.to)"
            f".join(',').includes('{WALK}')",
            timeout=60_000,
        )
        expect(page.locator("#failure .title")).to_contain_text("worker")
        expect(page.locator("#failure .message")).to_contain_text(str(killed))
        expect(row.locator("td.attempts")).to_have_text("2", timeout=30_000)
        expect(row.locator("td.changes")).to_contain_text("retried (attempt 2)")
        expect(row.locator("td.status")).to_have_text("succeeded", timeout=120_000)
        expect(page.locator("#state")).to_have_text("READY")
        new_pid = worker_pid(server)
        assert new_pid != killed
        expect(page.locator("#children tbody tr", has_text="generator")).to_contain_text(
            str(new_pid)
        )
        w.shot("4-worker-killed")
        w.assert_clean()


def _samples(server: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_moved_with_the_jobs_the_oom_and_the_kill(server: ServerProcess) -> None:
    before = _samples(server)

    def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
              **labels: str) -> float:  # fmt: skip
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value(before, "genvisor_jobs_total", status="cancelled") >= 1  # the harbour job
    assert value(before, "genvisor_jobs_total", status="succeeded") >= 2
    assert value(before, "genvisor_errors_total", code="VRAM.EXHAUSTED") >= 1
    assert value(before, "genvisor_errors_total", code="WORKER.CRASHED") >= 1
    assert value(before, "genvisor_worker_restarts_total") >= 1
    assert value(before, "genvisor_recoveries_total", rung="restart", result="ok") >= 1
    rungs = {dict(labels).get("rung") for name, labels in before if "recoveries" in name}
    assert "vae_tiling" in rungs, rungs
    assert value(before, "genvisor_supervisor_state", state="ready") == 1
    assert value(before, "genvisor_device_memory_bytes", device="cpu", kind="total") > 0
    assert value(before, "genvisor_bus_dropped_total") == 0

    job_id = submit(server, prompt="one more")
    read_events_until(
        f"{server.ws_url}/v1/events?since=0",
        lambda e: e["type"] == "job.succeeded" and e["data"]["job_id"] == job_id,
    )
    after = _samples(server)
    assert value(after, "genvisor_jobs_total", status="succeeded") == (
        value(before, "genvisor_jobs_total", status="succeeded") + 1
    )
    for stage in ("encode", "denoise", "decode", "save", "total"):
        count = "genvisor_job_duration_seconds_count"
        assert value(after, count, model="tiny-wan", stage=stage) == (
            value(before, count, model="tiny-wan", stage=stage) + 1
        ), stage
    assert value(after, "genvisor_bus_events_total") > value(before, "genvisor_bus_events_total")
    assert value(after, "genvisor_queue_depth") == 0

    # Every metric the Grafana dashboard queries is in the real output.
    exposed = {name for name, _ in after} | {f.name for f in text_string_to_metric_families(
        httpx.get(f"{server.url}/metrics", timeout=30).text)}  # fmt: skip
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for name in re.findall(r"\bgenvisor_[a-z_]+", target["expr"]):
                assert name in exposed, (name, panel["title"])


def test_docs_and_redoc_render_with_the_network_blocked(
    browser: Browser, server: ServerProcess
) -> None:
    with opened(browser, server, "/docs") as w:
        expect(w.page.locator(".swagger-ui .info .title")).to_contain_text("genvisor")
        expect(w.page.locator(".opblock-summary-path").first).to_be_visible()
        w.shot("5-docs")
        w.assert_clean()
    with opened(browser, server, "/redoc") as w:
        expect(w.page.locator("h1").first).to_contain_text("genvisor", timeout=30_000)
        w.shot("6-redoc")
        w.assert_clean()
