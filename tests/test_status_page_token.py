"""The status page of a server with an API token, in a real Chromium: it shows nothing before
the token, works after it is entered once (the tab keeps it, no URL ever carries it), and
/metrics and the docs follow the token."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, expect

from tests.runtime_harness import make_home
from tests.server_process import ServerProcess, read_events_until, running_server
from tests.status_browser import chromium, opened, submit

pytestmark = pytest.mark.slow

TOKEN = "page-token-0123456789-abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PROMPT = "a secret lighthouse"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[ServerProcess]:
    home = make_home(tmp_path_factory.mktemp("status-token"), tiny_model)
    with running_server(home, GENVISOR_API_TOKEN=TOKEN) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def job_id(server: ServerProcess) -> str:
    job = submit(server, headers=AUTH, prompt=PROMPT)
    read_events_until(
        f"{server.ws_url}/v1/events?since=0",
        lambda e: e["type"] == "job.succeeded" and e["data"]["job_id"] == job,
        headers=AUTH,
    )
    return job


def test_the_page_asks_for_the_token_once_and_never_puts_it_in_a_url(
    browser: Browser, server: ServerProcess, job_id: str
) -> None:
    with opened(browser, server) as w:
        page = w.page
        expect(page.locator("#token-form")).to_be_visible()
        expect(page.locator("#main")).to_be_hidden()
        assert PROMPT not in page.content()
        assert job_id not in page.content()
        w.shot("7-token-asked")

        page.fill("#token-input", "not-the-token-0123456789")
        page.click("#token-form button")
        expect(page.locator("#token-error")).to_contain_text("refused")
        expect(page.locator("#main")).to_be_hidden()

        page.fill("#token-input", TOKEN)
        page.click("#token-form button")
        expect(page.locator("#state")).to_have_text("READY", timeout=30_000)
        expect(page.locator("#conn")).to_have_text("live")
        row = page.locator(f'#jobs tr[data-job="{job_id}"]')
        expect(row.locator("td.prompt")).to_have_text(PROMPT)
        video = row.locator("video")
        page.wait_for_function(
            "v => v.readyState >= 2 && v.duration > 0", arg=video.element_handle(), timeout=30_000
        )
        # The tab keeps it: a reload does not ask again.
        page.reload()
        expect(page.locator("#conn")).to_have_text("live", timeout=30_000)
        expect(page.locator("#token-form")).to_be_hidden()
        assert page.evaluate("sessionStorage.getItem('genvisor.token')") == TOKEN
        w.shot("8-token-accepted")
        assert any("/v1/events" in u for u in w.urls), w.urls
        assert all(TOKEN not in u for u in w.urls), w.urls
        # The refused token's request was a 401, logged by the browser; nothing else.
        assert all("401" in e for e in w.console_errors), w.console_errors
        assert w.foreign == []
        assert w.dialogs == []


def test_metrics_and_docs_follow_the_token(browser: Browser, server: ServerProcess) -> None:
    assert httpx.get(f"{server.url}/metrics").status_code == 401
    assert httpx.get(f"{server.url}/v1/status").status_code == 401
    metrics = httpx.get(f"{server.url}/metrics", headers=AUTH)
    assert metrics.status_code == 200
    assert 'genvisor_supervisor_state{state="ready"} 1.0' in metrics.text
    assert httpx.get(f"{server.url}/docs").status_code == 401
    with opened(browser, server, "/docs", headers=AUTH) as w:
        expect(w.page.locator(".swagger-ui .info .title")).to_contain_text("genvisor")
        w.assert_clean()


def test_after_a_server_restart_the_page_resumes_from_the_last_seq(
    browser: Browser, server: ServerProcess
) -> None:
    with opened(browser, server) as w:
        page = w.page
        page.fill("#token-input", TOKEN)
        page.click("#token-form button")
        expect(page.locator("#conn")).to_have_text("live", timeout=30_000)
        first_socket = [u for u in w.urls if "/v1/events" in u]
        assert len(first_socket) == 1, first_socket
        assert server.terminate(timeout=30) == 0
        expect(page.locator("#conn")).to_contain_text("reconnecting", timeout=30_000)
        seen = page.evaluate("document.body.dataset.seq")
        assert int(seen) > 0
        # The same folder and port: the new run numbers on after the old one.
        with running_server(server.home, port=server.port, GENVISOR_API_TOKEN=TOKEN):
            expect(page.locator("#conn")).to_have_text("live", timeout=60_000)
            expect(page.locator("#state")).to_have_text("READY", timeout=60_000)
            sockets = [u for u in w.urls if "/v1/events" in u]
            assert sockets[-1].endswith(f"/v1/events?since={seen}"), (sockets, seen)
            # The old run's last transition and the new run's first are both in the log.
            log = page.locator("#events li")
            expect(log.filter(has_text="stopping → stopped")).to_have_count(1)
            expect(log.filter(has_text="starting → ready")).not_to_have_count(0)
            w.shot("9-resumed-after-restart")
            assert all(TOKEN not in u for u in w.urls)
