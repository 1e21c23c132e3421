"""No input gets a 5xx, and the token guards everything but the health probes: real servers in
subprocesses, real sockets, the `websockets` client library.

- Lone UTF-16 surrogates in a JSON body are a 422 naming the field, never a plain-text 500.
- A malformed WebSocket Origin is a 403 with no traceback in the log; a bad ``?since=`` is
  closed with 1008 and a reason that says what was wrong.
- With a token set, a request without it gets 401 before its body is looked at, and the API
  docs need it too. A weak token stops `genvisor serve` with one line naming the rule.
- A 500 that still happens carries the UserError JSON, without the traceback.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosedError, InvalidStatus
from websockets.sync.client import connect
from websockets.typing import Origin

from tests.server_process import (
    GENVISOR,
    ServerProcess,
    free_port,
    running_server,
    server_env,
    uvicorn_process,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
TOKEN = "0123456789abcdef"  # exactly the 16 characters a token needs at least
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {"content-type": "application/json"}
USER_ERROR_KEYS = {"code", "category", "severity", "title", "message", "suggestions", "technical"}

# genvisor's app as `genvisor serve` builds it, plus what only a test needs: two routes that
# fail (one outside genvisor's router, one inside a router with genvisor's route class), a
# route that writes a marker line to the log.
HOST_SCRIPT = """
import errno, logging, sys
import uvicorn
from fastapi import APIRouter
from supervisor.api.api_errors import route_class
from supervisor.api.app import create_app
from supervisor.core.settings import load_settings
from supervisor.core.structured_logging import configure_logging

settings = load_settings(overrides={"port": int(sys.argv[1])})
configure_logging("info", "json")
app = create_app(settings)
router = APIRouter(route_class=route_class(65536))

@app.get("/test/fail-in-app")
async def fail_in_app() -> None:
    raise RuntimeError("a bug outside genvisor's router")

@router.get("/test/fail-in-router")
async def fail_in_router() -> None:
    raise OSError(errno.ENOSPC, "No space left on device")

@app.get("/test/mark")
async def mark(text: str) -> dict[str, str]:
    logging.getLogger("genvisor.test").info("MARK %s", text)
    return {"marked": text}

app.include_router(router)
uvicorn.run(app, host="127.0.0.1", port=settings.port, log_config=None,
            ws="websockets-sansio", lifespan="on")
"""


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """`genvisor serve` with a token."""
    with running_server(tmp_path_factory.mktemp("guarded"), GENVISOR_API_TOKEN=TOKEN) as srv:
        yield srv
        assert srv.terminate(timeout=30) == 0


@pytest.fixture(scope="module")
def open_host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """genvisor's app without a token, with the test routes of HOST_SCRIPT, under uvicorn."""
    home = tmp_path_factory.mktemp("open")
    port = free_port()
    command = [sys.executable, "-c", HOST_SCRIPT, str(port)]
    with uvicorn_process(command, env=server_env(home), cwd=REPO) as (proc, lines):
        yield ServerProcess(proc=proc, port=port, home=home, log_lines=lines)
        proc.send_signal(signal.SIGTERM)
        # Plain uvicorn re-raises the signal after a complete shutdown: both exits are clean.
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)


def _user_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body: dict[str, Any] = response.json()
    assert USER_ERROR_KEYS <= body.keys(), body
    return body


def _refused(url: str, **kw: Any) -> int:
    """The HTTP status of a refused WebSocket handshake."""
    with pytest.raises(InvalidStatus) as refused:
        with connect(url, open_timeout=10, **kw):
            pass
    return refused.value.response.status_code


def _mark(server: ServerProcess, text: str, limit: float = 10.0) -> int:
    """Have the server log a marker line; the number of log lines up to it. Everything logged
    while handling earlier requests comes before it. The marker is logged before the response
    is sent, but the pipe is read by another thread: wait (bounded) until it has read it."""
    assert httpx.get(f"{server.url}/test/mark", params={"text": text}).status_code == 200
    deadline = time.monotonic() + limit
    while True:
        lines = list(server.log_lines)
        found = [i for i, line in enumerate(lines) if f"MARK {text}" in line]
        if found:
            return found[0] + 1
        assert time.monotonic() < deadline, "the marker line never reached the log"
        time.sleep(0.02)


# -- 1. lone surrogates: 422 naming the field; any 500 is a UserError -------------------------


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (rb'{"prompt": "\ud800"}', "prompt"),
        (rb'{"prompt": "a boat", "model": "\udfff"}', "model"),
        (rb'{"prompt": "a boat", "negative_prompt": "blur \ud800 x"}', "negative_prompt"),
        (rb'{"prompt": "a boat", "\ud800": 1}', "\\ud800"),
        (rb'{"prompt": "a boat", "extra": "\ud800"}', "extra"),
    ],
)
def test_lone_surrogate_is_a_422_naming_the_field(
    guarded: ServerProcess, raw: bytes, field: str
) -> None:
    r = httpx.post(f"{guarded.url}/v1/jobs", content=raw, headers={**JSON, **AUTH})
    body = _user_error(r, 422)
    assert [e["field"] for e in body["errors"]] == [field]
    assert body["message"].startswith(f"{field}: ")
    assert body["technical"]["traceback"] == ""


@pytest.mark.parametrize("raw", [b"\xef\xbf\xbd\xc8\x9bm\xff", b'{"prompt": "\xff"}', b"\x80"])
def test_a_body_that_is_not_utf8_is_a_400_user_error(guarded: ServerProcess, raw: bytes) -> None:
    # Found by the API fuzz: FastAPI's own refusal (Starlette's HTTPException) became a 500.
    r = httpx.post(f"{guarded.url}/v1/jobs", content=raw, headers={**JSON, **AUTH})
    body = _user_error(r, 400)
    assert body["code"] == "INPUT.INVALID"
    assert "parsing the body" in body["message"]


def test_a_500_is_a_user_error_without_traceback(open_host: ServerProcess) -> None:
    # Outside genvisor's router: the app's last-resort handler (the server logs the traceback).
    start = _mark(open_host, "before-500s")
    body = _user_error(httpx.get(f"{open_host.url}/test/fail-in-app"), 500)
    assert body["code"] == "UNKNOWN.ERROR"
    assert body["technical"]["type"] == "RuntimeError"
    assert body["technical"]["traceback"] == ""
    # Inside a router with genvisor's route class: categorized like any failure.
    body = _user_error(httpx.get(f"{open_host.url}/test/fail-in-router"), 500)
    assert body["code"] == "FS.DISK_FULL"
    assert body["technical"]["traceback"] == ""
    assert "Traceback" not in json.dumps(body)
    end = _mark(open_host, "after-500s")
    log = "".join(open_host.log_lines[start:end])
    # The tracebacks went to the server's log instead.
    assert log.count("Traceback (most recent call last)") >= 2
    assert "a bug outside genvisor's router" in log
    assert "GET /test/fail-in-router failed" in log


# -- 2. malformed Origin: 403, no traceback ----------------------------------------------------


def _malformed_origins(port: int) -> list[str]:
    return ["http://[::1", "http://a:99999", f"http://127.0.0.1:{port}.evil.example", "null"]


def test_malformed_origin_is_a_403(guarded: ServerProcess) -> None:
    for origin in _malformed_origins(guarded.port):
        # With the right token: the refusal is the Origin's.
        url = f"{guarded.ws_url}/v1/events"
        assert _refused(url, origin=Origin(origin), additional_headers=AUTH) == 403, origin
    # The server's own origin with the token still streams.
    own = f"http://127.0.0.1:{guarded.port}"
    with connect(
        f"{guarded.ws_url}/v1/events?since=0",
        origin=Origin(own),
        additional_headers=AUTH,
        open_timeout=10,
    ) as ws:
        assert json.loads(ws.recv(timeout=10))["seq"] >= 1


def test_malformed_origin_leaves_no_traceback_in_the_log(open_host: ServerProcess) -> None:
    start = _mark(open_host, "before-origins")
    for origin in _malformed_origins(open_host.port):
        status = _refused(f"{open_host.ws_url}/v1/events", origin=Origin(origin))
        assert status == 403, origin
    end = _mark(open_host, "after-origins")
    refusal_lines = open_host.log_lines[start : end - 1]
    # Each refusal leaves only the server's own short info lines (uvicorn's '"WebSocket
    # /v1/events" 403' and the websockets library's "connection rejected (403 Forbidden)"),
    # the same as for any refused Origin; nothing at error level, no traceback.
    assert len(refusal_lines) <= 2 * 4
    assert all(len(line) < 300 for line in refusal_lines), refusal_lines
    log = "".join(refusal_lines)
    assert '"level": "info"' in log
    assert '"level": "error"' not in log
    assert "Traceback" not in log
    assert "Exception in ASGI application" not in log


# -- 3. bad ?since=: a reason the client can read ----------------------------------------------


@pytest.mark.parametrize("since", ["-1", "abc", "1e30", "1.5", str(2**62 + 1), ""])
def test_bad_since_is_closed_with_a_reason(guarded: ServerProcess, since: str) -> None:
    url = f"{guarded.ws_url}/v1/events?since={since}"
    with connect(url, additional_headers=AUTH, open_timeout=10) as ws:
        with pytest.raises(ConnectionClosedError) as closed:
            ws.recv(timeout=10)
    received = closed.value.rcvd
    assert received is not None
    assert received.code == 1008
    assert received.reason == f"since must be a whole number from 0 to 2**62, got {since!r}"
    # What the client library prints for it carries the reason.
    assert received.reason in str(closed.value)


# -- 4. the token before the body --------------------------------------------------------------


def test_token_is_checked_before_the_body(guarded: ServerProcess) -> None:
    url = f"{guarded.url}/v1/jobs"
    bodies: list[tuple[bytes, dict[str, str]]] = [
        (b"not json", JSON),
        (rb'{"prompt": "\ud800"}', JSON),
        (b'{"prompt": "x", "width": 17}', JSON),
    ]
    for wrong in ({}, {"Authorization": "Bearer not-the-token-at-all"}):
        for content, headers in bodies:
            r = httpx.post(url, content=content, headers={**headers, **wrong})
            body = _user_error(r, 401)
            assert body["title"] == "A valid API token is required"
            assert body["code"] == "CONFIG.TOKEN_REQUIRED"  # the client's setting, not ours
            assert r.headers["www-authenticate"] == "Bearer"
    # A body announced as huge (none sent): refused by the headers alone, with 401 not 413.
    request = (
        f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1:{guarded.port}\r\n"
        "Content-Type: application/json\r\nContent-Length: 99999999\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as sock:
        sock.sendall(request.encode())
        status_line = sock.makefile("rb").readline()
    assert status_line.split()[1] == b"401", status_line
    # Chunked bodies (no Content-Length) too.
    r = httpx.post(url, content=iter([b'{"prompt":', b' "x"}']), headers=JSON)
    _user_error(r, 401)
    # With the token, the same bodies get their own refusals.
    r = httpx.post(url, content=b"not json", headers={**JSON, **AUTH})
    assert _user_error(r, 422)["errors"][0]["field"] == "body"
    r = httpx.post(url, content=b'{"prompt": "x", "width": 17}', headers={**JSON, **AUTH})
    assert _user_error(r, 422)["errors"][0]["field"] == "width"
    big = b'{"prompt": "' + b"x" * 70_000 + b'"}'
    _user_error(httpx.post(url, content=big, headers={**JSON, **AUTH}), 413)


def test_websocket_checks_the_token_before_since(guarded: ServerProcess) -> None:
    # Refused before the handshake completes: a bad since is not even looked at.
    assert _refused(f"{guarded.ws_url}/v1/events?since=abc") == 403
    wrong = {"Authorization": "Bearer not-the-token-at-all"}
    assert _refused(f"{guarded.ws_url}/v1/events?since=0", additional_headers=wrong) == 403


# -- 5. weak tokens stop the server at start ---------------------------------------------------


@pytest.mark.parametrize("token", ["", "   ", "tooShort9", "x" * 15, " " + "y" * 20, "é" * 20])
def test_weak_token_refused_at_start(tmp_path: Path, token: str) -> None:
    result = subprocess.run(
        [GENVISOR, "serve", "--port", str(free_port())],
        env=server_env(tmp_path, GENVISOR_API_TOKEN=token),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "api_token" in result.stderr
    assert "GENVISOR_API_TOKEN" in result.stderr
    assert "at least 16 printable ASCII characters" in result.stderr
    assert f"<hidden, {len(token)} characters>" in result.stderr
    if token.strip():
        assert token.strip() not in result.stderr  # a secret is never printed


# -- 6. the docs follow the token; only the probes stay open -----------------------------------


def test_docs_need_the_token_and_only_probes_are_open(guarded: ServerProcess) -> None:
    for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
        body = _user_error(httpx.get(f"{guarded.url}{path}"), 401)
        assert body["title"] == "A valid API token is required"
        assert httpx.get(f"{guarded.url}{path}", headers=AUTH).status_code == 200
    schema = httpx.get(f"{guarded.url}/openapi.json", headers=AUTH).json()
    open_paths = []
    for path, operations in schema["paths"].items():
        for method in operations:
            # Path parameters get a value that passes any pattern; refusals come from the guard.
            url = guarded.url + path.replace("{job_id}", "j").replace("{name}", "tiny-wan")
            r = httpx.request(method.upper(), url, headers=JSON, content=b"{}")
            if r.status_code != 401:
                open_paths.append(path)
    assert sorted(open_paths) == ["/healthz", "/readyz"]
