"""The jobs API against a real server process: submit, watch, download, cancel, refuse."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.runtime_harness import make_home
from tests.server_process import ServerProcess, read_events_until, running_server

pytestmark = pytest.mark.slow

SMALL = {"prompt": "a paper boat on a pond", "width": 32, "height": 32, "frames": 5, "steps": 2}
# Long enough to be caught mid-denoise on any machine: minutes of steps, always cancelled or
# killed long before it could finish.
LONG = {**SMALL, "width": 256, "height": 256, "frames": 33, "steps": 1000}
# About a second of work: still running when a test kills the server at its first step.
MEDIUM = {**SMALL, "width": 128, "height": 128, "frames": 17, "steps": 48}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[ServerProcess]:
    home = make_home(tmp_path_factory.mktemp("api"), tiny_model)
    with running_server(home) as srv:
        yield srv


def wait_event(
    srv: ServerProcess, match: Any, *, since: int = 0, limit: float = 120.0
) -> dict[str, Any]:
    """Read the event stream (replay, then live) until `match(event)`; real WebSocket."""
    return read_events_until(f"{srv.ws_url}/v1/events?since={since}", match, limit=limit)


def job_event(srv: ServerProcess, job_id: str, *types: str) -> dict[str, Any]:
    return wait_event(srv, lambda e: e["type"] in types and e["data"].get("job_id") == job_id)


def submit(srv: ServerProcess, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(f"{srv.url}/v1/jobs", json=body, timeout=30)
    assert r.status_code == 202, r.text
    return dict(r.json())


def test_submit_succeeds_and_mp4_downloads_with_ranges(server: ServerProcess) -> None:
    accepted = submit(server, SMALL)
    assert accepted["status"] == "queued"
    assert accepted["queue_position"] >= 1
    done = job_event(server, accepted["id"], "job.succeeded", "job.failed")
    assert done["type"] == "job.succeeded", done
    job = httpx.get(f"{server.url}/v1/jobs/{accepted['id']}").json()
    assert job["status"] == "succeeded"
    assert job["attempts"] == 1
    assert job["result"]["params_used"]["num_frames"] == 5
    video = httpx.get(f"{server.url}/v1/jobs/{accepted['id']}/output")
    assert video.status_code == 200
    assert video.headers["content-type"] == "video/mp4"
    assert video.content[4:8] == b"ftyp"
    part = httpx.get(
        f"{server.url}/v1/jobs/{accepted['id']}/output", headers={"Range": "bytes=0-99"}
    )
    assert part.status_code == 206
    assert part.headers["content-range"].startswith("bytes 0-99/")
    assert part.content == video.content[:100]
    listed = httpx.get(f"{server.url}/v1/jobs", params={"status": "succeeded"}).json()
    assert accepted["id"] in [j["id"] for j in listed["jobs"]]


def test_cancel_queued_and_running_jobs(server: ServerProcess) -> None:
    running = submit(server, LONG)
    queued = submit(server, SMALL)
    wait_event(
        server,
        lambda e: (
            e["type"] == "job.progress"
            and e["data"]["job_id"] == running["id"]
            and (e["data"]["step"] or 0) >= 1
        ),
    )
    r = httpx.post(f"{server.url}/v1/jobs/{queued['id']}/cancel")
    assert r.status_code == 202
    assert r.json()["status"] == "cancelled"
    r = httpx.post(f"{server.url}/v1/jobs/{running['id']}/cancel")
    assert r.status_code == 202
    job_event(server, running["id"], "job.cancelled")
    assert httpx.get(f"{server.url}/v1/jobs/{running['id']}").json()["status"] == "cancelled"
    again = httpx.post(f"{server.url}/v1/jobs/{running['id']}/cancel")
    assert again.status_code == 409
    assert again.json()["code"] == "INPUT.INVALID"
    missing = httpx.get(f"{server.url}/v1/jobs/{running['id']}/output")
    assert missing.status_code == 404
    assert not list(server.home.joinpath("outputs").glob(f"{running['id']}*"))


INVALID = [
    ({**SMALL, "frames": 6}, "frames", "4k+1"),
    ({**SMALL, "width": 33}, "width", "multiple of 16 (nearest: 32 or 48)"),
    ({**SMALL, "height": -16}, "height", "must be at least 16"),
    ({**SMALL, "width": 4096}, "width", "at most 1280"),
    ({**SMALL, "prompt": ""}, "prompt", "at least 1"),
    ({**SMALL, "prompt": "x" * 2001}, "prompt", "at most 2000"),
    ({**SMALL, "model": "../../etc/passwd"}, "model", "pattern"),
    ({**SMALL, "model": "no-such-model"}, "model", "allowed: Wan2.1-T2V-1.3B"),
    ({**SMALL, "steps": 0}, "steps", "must be at least 1"),
    ({**SMALL, "seed": -1}, "seed", "must be at least 0"),
    ({**SMALL, "unknown": 1}, "unknown", "is not a known field"),
    ({"width": 32}, "prompt", "is required"),
    ({**SMALL, "frames": "many"}, "frames", "must be a whole number"),
]


@pytest.mark.parametrize(("body", "field", "says"), INVALID)
def test_invalid_input_names_the_field_and_queues_nothing(
    server: ServerProcess, body: dict[str, Any], field: str, says: str
) -> None:
    before = httpx.get(f"{server.url}/v1/jobs", params={"limit": 1}).json()["counts"]
    r = httpx.post(f"{server.url}/v1/jobs", json=body)
    assert r.status_code == 422, r.text
    error = r.json()
    assert error["code"].startswith("INPUT.")
    assert error["category"] == "input_validation"
    fields = {e["field"]: e["message"] for e in error["errors"]}
    assert field in fields
    assert says in fields[field]
    assert field in error["message"]
    after = httpx.get(f"{server.url}/v1/jobs", params={"limit": 1}).json()["counts"]
    assert after == before


def test_hostile_requests_are_refused_cleanly(server: ServerProcess) -> None:
    bad_json = httpx.post(
        f"{server.url}/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert bad_json.status_code == 422
    assert bad_json.json()["errors"][0]["field"] == "body"
    # NaN parses from a JSON body but can not be echoed back in JSON: a 422, not a 500.
    nan = httpx.post(
        f"{server.url}/v1/jobs",
        content=b'{"prompt": NaN}',
        headers={"content-type": "application/json"},
    )
    assert nan.status_code == 422, nan.text
    assert nan.json()["errors"][0] == {
        "field": "prompt",
        "message": "must be a valid string",
        "value": "nan",
    }
    huge = httpx.post(f"{server.url}/v1/jobs", json={**SMALL, "prompt": "y" * 100_000})
    assert huge.status_code == 413
    for job_id in ("../../etc/passwd", "%2e%2e%2fjobs.sqlite3", "x" * 300):
        r = httpx.get(f"{server.url}/v1/jobs/{job_id}/output")
        assert r.status_code == 404
        assert r.json()["code"] == "INPUT.INVALID"


def test_kill_9_server_loses_no_job(tmp_path: Path, tiny_model: Path) -> None:
    home = make_home(tmp_path, tiny_model)
    with running_server(home) as srv:
        ids = [submit(srv, MEDIUM)["id"], submit(srv, SMALL)["id"], submit(srv, SMALL)["id"]]
        wait_event(
            srv,
            lambda e: (
                e["type"] == "job.progress"
                and e["data"]["job_id"] == ids[0]
                and (e["data"]["step"] or 0) >= 1
            ),
        )
        worker_pid = httpx.get(f"{srv.url}/v1/state").json()["children"][1]["pid"]
        os.kill(srv.proc.pid, signal.SIGKILL)
        srv.proc.wait(timeout=10)
    with running_server(home) as srv:
        for job_id in ids:
            assert srv.proc.poll() is None, "".join(srv.log_lines[-30:])
            event = job_event(srv, job_id, "job.succeeded", "job.failed")
            assert event["type"] == "job.succeeded", event
        statuses = [httpx.get(f"{srv.url}/v1/jobs/{i}").json()["status"] for i in ids]
        assert statuses == ["succeeded"] * 3
    outputs = sorted(p.name for p in (home / "outputs").iterdir())
    assert outputs == sorted([f"{i}.mp4" for i in ids] + [f"{i}.json" for i in ids])
    with pytest.raises(ProcessLookupError):
        os.kill(worker_pid, 0)  # the old worker left with its server


def test_queue_full_429_and_halted_503(tmp_path: Path, tiny_model: Path) -> None:
    home = make_home(tmp_path, tiny_model)
    env = {"GENVISOR_QUEUE_MAX": "2", "GENVISOR_WORKER_MAX_RESTARTS": "0"}
    with running_server(home, **env) as srv:
        first = submit(srv, LONG)
        wait_event(srv, lambda e: e["type"] == "job.started" and e["data"]["job_id"] == first["id"])
        submit(srv, SMALL)
        submit(srv, SMALL)
        full = httpx.post(f"{srv.url}/v1/jobs", json=SMALL)
        assert full.status_code == 429
        assert full.json()["title"] == "The queue is full"
        state = httpx.get(f"{srv.url}/v1/state").json()
        worker = next(c for c in state["children"] if c["id"] == "generator")
        os.kill(worker["pid"], signal.SIGKILL)
        wait_event(
            srv, lambda e: e["type"] == "supervisor.transition" and e["data"]["to"] == "halted"
        )
        refused = httpx.post(f"{srv.url}/v1/jobs", json=SMALL)
        assert refused.status_code == 503
        assert "halted" in refused.json()["title"]
        # It says why: the transition that halted it (restart intensity), with its code.
        assert refused.json()["code"] == "WORKER.CRASHED"
        assert refused.json()["message"].startswith("The supervisor halted: ")
        assert "resets it" in refused.json()["message"]
        assert httpx.get(f"{srv.url}/v1/state").status_code == 200
        assert httpx.get(f"{srv.url}/v1/jobs").status_code == 200
        not_ready = httpx.get(f"{srv.url}/readyz")
        assert not_ready.status_code == 503
        assert "the supervisor is halted" in not_ready.json()["reasons"]
        assert "generator is failed" in not_ready.json()["reasons"]
        assert httpx.post(f"{srv.url}/v1/supervisor/reset").json()["state"] in ("starting", "ready")
        # The job the crash interrupted runs again once the supervisor serves again.
        wait_event(
            srv,
            lambda e: (
                e["type"] == "job.started"
                and e["data"]["job_id"] == first["id"]
                and e["data"]["attempt"] == 2
            ),
        )
        assert httpx.post(f"{srv.url}/v1/jobs/{first['id']}/cancel").status_code == 202
        job_event(srv, first["id"], "job.cancelled")


def test_models_listed_and_verified(server: ServerProcess) -> None:
    models = httpx.get(f"{server.url}/v1/models", timeout=30).json()["models"]
    by_name = {m["name"]: m for m in models}
    assert by_name["tiny-wan"]["state"] == "present"
    assert by_name["Wan2.1-T2V-1.3B"]["state"] == "missing"
    verified = httpx.post(f"{server.url}/v1/models/tiny-wan/verify", timeout=60).json()
    assert verified["ok"] is True
    unknown = httpx.post(f"{server.url}/v1/models/no-such-model/verify")
    assert unknown.status_code == 404
    assert unknown.json()["code"] == "MODEL.NOT_FOUND"
    traversal = httpx.post(f"{server.url}/v1/models/..%2f..%2fetc/verify")
    assert traversal.status_code == 404
