"""The person-facing CLI (`generate`, `jobs`, `events`, `reset`) as real processes against a real
server on a free port: progress is visible, the MP4 is saved, misuse gets one clear line."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.runtime_harness import make_home
from tests.server_process import (
    GENVISOR,
    ServerProcess,
    free_port,
    read_events_until,
    running_server,
    server_env,
)

pytestmark = pytest.mark.slow

SMALL = ["--width", "32", "--height", "32", "--frames", "5", "--steps", "2"]
# Many cheap steps: long enough to be caught mid-denoise, quick enough to finish twice.
MEDIUM = ["--width", "32", "--height", "32", "--frames", "5", "--steps", "60"]
LONG = {"prompt": "a long one", "width": 128, "height": 128, "frames": 17, "steps": 400}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[ServerProcess]:
    home = make_home(tmp_path_factory.mktemp("cli"), tiny_model)
    with running_server(home) as srv:
        yield srv


def cli(
    *argv: str, cwd: Path | None = None, timeout: float = 180.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GENVISOR, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=server_env(Path("/nonexistent-home")),
    )


def wait_denoising(srv: ServerProcess, job_id: str, since: int) -> None:
    """Until the job has done a denoising step (a real WebSocket, replay then live)."""

    def denoising(event: dict[str, Any]) -> bool:
        data = event["data"]
        if data.get("job_id") != job_id:
            return False
        assert event["type"] in ("job.queued", "job.started", "job.progress"), event
        return event["type"] == "job.progress" and (data["step"] or 0) >= 1

    read_events_until(f"{srv.ws_url}/v1/events?since={since}", denoising)


def job_counts(srv: ServerProcess) -> dict[str, int]:
    return dict(httpx.get(f"{srv.url}/v1/jobs", params={"limit": 1}).json()["counts"])


def test_generate_end_to_end_shows_progress_and_saves_the_mp4(
    server: ServerProcess, tmp_path: Path
) -> None:
    done = cli(
        "generate",
        "a paper boat on a pond",
        *SMALL,
        "--seed",
        "7",
        "--url",
        server.url,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    job_id = out.split("job ", 1)[1].split(":", 1)[0]
    assert "tiny-wan, 32x32x5, 2 steps, seed 7" in out
    assert "attempt 1 started on tiny-wan" in out
    assert "stage denoise" in out
    assert "denoise step 2/2" in out
    assert "succeeded in" in out
    assert out.count("queued at position") <= 1  # the answer and the event say it once
    video = tmp_path / f"{job_id}.mp4"
    assert f"saved {video}" in out
    assert video.read_bytes()[4:8] == b"ftyp"
    served = httpx.get(f"{server.url}/v1/jobs/{job_id}/output").content
    assert video.read_bytes() == served

    shown = cli("jobs", "show", job_id, "--json", "--url", server.url)
    assert shown.returncode == 0, shown.stderr
    job = json.loads(shown.stdout)
    assert job["status"] == "succeeded"
    assert job["params"]["seed"] == 7
    human = cli("jobs", "show", job_id, "--url", server.url)
    assert f"job {job_id}: succeeded" in human.stdout
    listed = cli("jobs", "list", "--status", "succeeded", "--json", "--url", server.url)
    assert job_id in [j["id"] for j in json.loads(listed.stdout)["jobs"]]
    table = cli("jobs", "list", "--url", server.url)
    assert table.returncode == 0
    assert job_id in table.stdout


def test_generate_out_option_and_failure_of_download_target(
    server: ServerProcess, tmp_path: Path
) -> None:
    target = tmp_path / "boat.mp4"
    done = cli("generate", "a boat", *SMALL, "--out", str(target), "--url", server.url)
    assert done.returncode == 0, done.stderr
    assert target.read_bytes()[4:8] == b"ftyp"
    assert not list(tmp_path.glob(".*.part"))


def test_events_limit_and_type_filter(server: ServerProcess) -> None:
    # The module's earlier jobs are in the journal: replay from 0 finds them.
    r = cli("events", "--since", "0", "--type", "job.*", "--limit", "4", "--url", server.url)
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(events) == 4
    assert all(e["type"].startswith("job.") for e in events)
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 4
    assert set(events[0]) == {"seq", "ts", "type", "data"}
    only = cli(
        "events",
        "--since",
        "0",
        "--type",
        "supervisor.transition",
        "--limit",
        "1",
        "--url",
        server.url,
    )
    assert json.loads(only.stdout)["data"]["to"] in {"starting", "ready"}


def test_jobs_cancel_a_queued_and_a_running_job(server: ServerProcess) -> None:
    since = httpx.get(f"{server.url}/v1/state").json()["bus"]["last_seq"]
    running = httpx.post(f"{server.url}/v1/jobs", json=LONG).json()["id"]
    waiting = httpx.post(f"{server.url}/v1/jobs", json={"prompt": "next", "steps": 2}).json()["id"]
    wait_denoising(server, running, since)

    r = cli("jobs", "cancel", waiting, "--url", server.url)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"job {waiting} cancelled"
    r = cli("jobs", "cancel", running, "--url", server.url)
    assert r.returncode == 0, r.stderr
    assert running in r.stdout
    ended = cli(
        "events",
        "--since",
        str(since),
        "--type",
        "job.cancelled",
        "--limit",
        "2",
        "--url",
        server.url,
    )
    assert {json.loads(line)["data"]["job_id"] for line in ended.stdout.splitlines()} == {
        running,
        waiting,
    }
    again = cli("jobs", "cancel", running, "--url", server.url)
    assert again.returncode == 1
    assert again.stderr.startswith("genvisor: The job has already finished")
    shown = cli("jobs", "show", running, "--url", server.url)
    assert f"job {running}: cancelled" in shown.stdout


def test_bad_value_is_one_clear_line_and_queues_nothing(server: ServerProcess) -> None:
    before = job_counts(server)
    r = cli("generate", "a boat", "--frames", "6", "--url", server.url)
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("genvisor: invalid frames=6:")
    assert "4k+1" in lines[0]
    assert "Value error" not in lines[0]  # no library prefix
    assert lines[0].endswith("(nearest: 5 or 9)")
    r = cli("generate", "a boat", "--width", "33", "--url", server.url)
    said = "genvisor: invalid width=33: must be a multiple of 16 (nearest: 32 or 48)"
    assert r.stderr.strip() == said
    r = cli("generate", "a boat", "--width", "33", "--model", "no-such", "--url", server.url)
    assert r.returncode == 1
    assert r.stderr.startswith("genvisor: invalid")
    assert job_counts(server) == before
    unknown = cli("jobs", "show", "no-such-job", "--url", server.url)
    assert unknown.returncode == 1
    assert unknown.stderr.splitlines()[0].startswith("genvisor: No such job")
    # The id stays one quoted path segment: it can name no other endpoint.
    hostile = cli("jobs", "show", "../../v1/state", "--url", server.url)
    assert hostile.returncode == 1
    assert hostile.stdout == ""
    assert hostile.stderr.startswith("genvisor: The request was refused: Not Found")
    reset = cli("reset", "--url", server.url)
    assert reset.returncode == 1
    assert reset.stderr.startswith("genvisor: Nothing to reset")


def test_server_not_running_is_one_line_exit_1(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for argv in (
        ("generate", "a boat", *SMALL),
        ("jobs", "list"),
        ("jobs", "show", "abc"),
        ("events", "--limit", "1"),
        ("reset",),
    ):
        r = cli(*argv, "--url", url, cwd=tmp_path)
        assert r.returncode == 1, argv
        assert r.stdout == ""
        lines = r.stderr.splitlines()
        assert len(lines) == 1, (argv, r.stderr)
        assert lines[0].startswith(f"genvisor: no genvisor server at {url}")
    assert not list(tmp_path.iterdir())


def _pump(proc: subprocess.Popen[str], lines: queue.Queue[str | None]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.put(line)
    lines.put(None)


def _read_until(lines: queue.Queue[str | None], needle: str, seen: list[str]) -> None:
    while True:
        line = lines.get(timeout=120)
        if line is None:
            raise AssertionError(f"output ended before {needle!r}:\n{''.join(seen)}")
        seen.append(line)
        if needle in line:
            return


def test_generate_resumes_its_stream_across_a_server_kill(tmp_path: Path, tiny_model: Path) -> None:
    """kill -9 the server mid-denoise and start it again on the same port: the CLI resumes the
    stream from the last seq it saw, and the re-queued job's video is saved."""
    home = make_home(tmp_path, tiny_model)
    port = free_port()
    target = tmp_path / "resumed.mp4"
    with running_server(home, port=port) as first:
        proc = subprocess.Popen(
            [
                GENVISOR,
                "generate",
                "a lighthouse",
                *MEDIUM,
                "--out",
                str(target),
                "--url",
                first.url,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=server_env(Path("/nonexistent-home")),
        )
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_pump, args=(proc, lines), daemon=True).start()
        seen: list[str] = []
        _read_until(lines, "denoise step", seen)
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(timeout=10)
    try:
        with running_server(home, port=port):
            code = proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = "".join(seen) + "".join(_drain(lines))
    assert proc.stdout is not None
    proc.stdout.close()
    assert code == 0, output
    assert "event stream" in output
    assert "resuming after seq" in output
    assert output.count(" started on tiny-wan") >= 2  # before the kill, and after the restart
    assert f"saved {target}" in output
    assert target.read_bytes()[4:8] == b"ftyp"


def _drain(lines: queue.Queue[str | None]) -> Iterator[str]:
    """The rest of the output; the process has ended, so its pipe ends (None) soon."""
    while (line := lines.get(timeout=30)) is not None:
        yield line


def test_state_for_a_person_prints_no_none_and_survives_a_closed_pipe(
    server: ServerProcess,
) -> None:
    shown = cli("state", "--url", server.url)
    assert shown.returncode == 0, shown.stderr
    assert "None" not in shown.stdout
    # A reader that goes away (`| head -1`) ends the command quietly.
    piped = subprocess.run(
        f"{GENVISOR} state --graph --url {server.url} | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert piped.stdout.strip() == "---"
    assert "Traceback" not in piped.stderr
