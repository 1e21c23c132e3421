"""A real Chromium (Debian's package) driven by Playwright against a real server, for the status
page's tests: every request not to the server is refused and recorded, console errors and
dialogs are collected, screenshots land in `test-artifacts/` (kept out of git)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, Dialog, Page, Playwright, Request, Route, sync_playwright

from tests.server_process import ServerProcess

__all__ = [
    "ARTIFACTS",
    "CHROMIUM",
    "Watched",
    "chromium",
    "kill_worker",
    "opened",
    "submit",
    "worker_pid",
]

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "status-page"
SMALL = {"width": 32, "height": 32, "frames": 5, "steps": 2}


@contextmanager
def chromium() -> Iterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: `make install` installs Debian's chromium")
    pw: Playwright
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Watched:
    page: Page
    server: ServerProcess
    console_errors: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def shot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def assert_clean(self) -> None:
        assert self.console_errors == [], self.console_errors
        assert self.foreign == [], self.foreign
        assert self.dialogs == [], self.dialogs


@contextmanager
def opened(
    browser: Browser,
    server: ServerProcess,
    path: str = "/",
    *,
    headers: dict[str, str] | None = None,
) -> Iterator[Watched]:
    """A fresh browser context on `path`: only the server is reachable."""
    context = browser.new_context(extra_http_headers=headers)
    page = context.new_page()
    watched = Watched(page=page, server=server)
    own = f"127.0.0.1:{server.port}"

    def route(route: Route) -> None:
        url = urlsplit(route.request.url)
        if url.scheme in ("http", "https", "ws", "wss") and url.netloc != own:
            watched.foreign.append(route.request.url)
            route.abort()
        else:
            route.continue_()

    def request(req: Request) -> None:
        watched.urls.append(req.url)

    def dialog(d: Dialog) -> None:
        watched.dialogs.append(d.message)
        d.dismiss()

    context.route("**/*", route)
    page.on("request", request)
    page.on("websocket", lambda ws: watched.urls.append(ws.url))
    page.on("dialog", dialog)
    page.on("pageerror", lambda exc: watched.console_errors.append(str(exc)))
    page.on(
        "console",
        lambda msg: watched.console_errors.append(msg.text) if msg.type == "error" else None,
    )
    try:
        page.goto(server.url + path)
        yield watched
    finally:
        context.close()


def submit(server: ServerProcess, headers: dict[str, str] | None = None, **body: Any) -> str:
    answer = httpx.post(
        f"{server.url}/v1/jobs", json={**SMALL, **body}, headers=headers, timeout=30
    )
    assert answer.status_code == 202, answer.text
    job_id: str = answer.json()["id"]
    return job_id


def worker_pid(server: ServerProcess, headers: dict[str, str] | None = None) -> int:
    state = httpx.get(f"{server.url}/v1/state", headers=headers, timeout=30).json()
    pid = next(c for c in state["children"] if c["id"] == "generator")["pid"]
    assert isinstance(pid, int), state["children"]
    return pid


def kill_worker(server: ServerProcess) -> int:
    pid = worker_pid(server)
    os.kill(pid, 9)
    return pid
