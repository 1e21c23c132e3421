"""A worker per device: two real CPU workers (`devices = "cpu:0,cpu:1"`), each its own
supervised child with its own real memory cap (RLIMIT_AS), jobs placed by fit."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from supervisor.core.params import GenerationParams
from supervisor.jobs import Job, new_job_id
from supervisor.runtime import Runtime
from supervisor.supervision.messages import CancelRequest, Reset
from supervisor.supervision.state_machine import State
from tests.runtime_harness import EventLog, make_home, running_runtime
from tests.server_process import GENVISOR, read_events_until, running_server, server_env

pytestmark = pytest.mark.slow

TWO = {"devices": "cpu:0,cpu:1"}


def _job(prompt: str, **size: int) -> Job:
    params = GenerationParams(
        prompt=prompt,
        width=size.get("width", 32),
        height=size.get("height", 32),
        num_frames=size.get("num_frames", 5),
        steps=size.get("steps", 2),
        seed=3,
    )
    return Job(id=new_job_id(), model="tiny-wan", params=params)


def _of_job(log: EventLog, type_: str, job_id: str) -> list[Any]:
    return [e.data for e in log.of_type(type_) if getattr(e.data, "job_id", None) == job_id]


def _started_on(log: EventLog, job_id: str) -> list[str | None]:
    return [e.device for e in _of_job(log, "job.started", job_id)]


async def _succeeds(runtime: Runtime, log: EventLog, job: Job) -> None:
    await runtime.submit(job)
    done = await log.wait_job(job.id, "job.succeeded", "job.failed", limit=300)
    assert done.type.value == "job.succeeded", done.to_json()


@pytest.mark.anyio
async def test_a_job_too_large_for_one_worker_is_placed_on_the_larger_one(
    tmp_path: Path, tiny_model: Path
) -> None:
    home = make_home(tmp_path, tiny_model)
    caps = "cpu:0=1536MiB,cpu:1=3GiB"
    async with running_runtime(home, **TWO, device_memory_limit=caps) as (runtime, log):
        await runtime.supervisor.wait_settled()
        # A first job: the model's weights become known (pre-flight needs them), and its
        # measured peak calibrates the estimates (a job of a similar size: a 32x32 one is
        # mostly fixed costs and would scale every estimate up several times).
        await _succeeds(runtime, log, _job("a lighthouse", width=320, height=192, num_frames=17))
        # Measured here: a torch worker's address space is about 1.1 GiB at ready, so the
        # 1.5 GiB worker has a few hundred MiB for a job; this one's decode needs more.
        big = _job("a harbour at night", width=640, height=384, num_frames=17)
        before = len(log.states())
        await _succeeds(runtime, log, big)
        started = _of_job(log, "job.started", big.id)
        assert [s.device for s in started] == ["cpu:1"], started
        assert started[0].placement.startswith("placed on cpu:1: fits without changes")
        assert "cpu:0 would need" in started[0].placement or "cpu:0 does not fit" in (
            started[0].placement
        )
        assert _of_job(log, "job.retrying", big.id) == []
        stored = await runtime.store.get(big.id)
        assert stored is not None
        assert stored.changes == []
        assert "failed" not in log.states()[before:]  # no out-of-memory anywhere


@pytest.mark.anyio
async def test_two_small_jobs_run_at_the_same_time_on_two_workers(
    tmp_path: Path, tiny_model: Path
) -> None:
    home = make_home(tmp_path, tiny_model)
    async with running_runtime(home, **TWO) as (runtime, log):
        await runtime.supervisor.wait_settled()
        first, second = _job("a fox", steps=6), _job("a heron", steps=6)
        await runtime.submit(first)
        await runtime.submit(second)
        for job in (first, second):
            done = await log.wait_job(job.id, "job.succeeded", "job.failed", limit=300)
            assert done.type.value == "job.succeeded", done.to_json()
        assert {_started_on(log, first.id)[0], _started_on(log, second.id)[0]} == {
            "cpu:0",
            "cpu:1",
        }
        # At the same time: the second started before the first finished.
        seqs = {
            (e.type.value, getattr(e.data, "job_id", None)): e.seq
            for e in log.events
            if e.type.value in ("job.started", "job.succeeded")
        }
        assert seqs[("job.started", second.id)] < seqs[("job.succeeded", first.id)]
        dump = runtime.supervisor.snapshot().as_dict()
        ids = {c["id"] for c in dump["children"]}
        assert {"generator:cpu:0", "generator:cpu:1"} <= ids


@pytest.mark.anyio
async def test_cancel_reaches_the_job_on_either_device(tmp_path: Path, tiny_model: Path) -> None:
    home = make_home(tmp_path, tiny_model)
    async with running_runtime(home, **TWO) as (runtime, log):
        await runtime.supervisor.wait_settled()
        first, second = _job("a slow tide", steps=400), _job("a slow dawn", steps=400)
        for job in (first, second):
            await runtime.submit(job)
        for job in (first, second):
            await log.wait_for(
                lambda job=job: any(
                    p.stage.value == "denoise" for p in _of_job(log, "job.progress", job.id)
                ),
                "both denoising",
                limit=300,
            )
        # The second one runs on the second device: cancelling it stops it there, and the
        # first one is untouched.
        await runtime.supervisor.ask(CancelRequest(second.id), object, timeout=10.0)
        await log.wait_job(second.id, "job.cancelled", limit=60)
        assert runtime.jobs.running_job(first.id) is not None
        await runtime.supervisor.ask(CancelRequest(first.id), object, timeout=10.0)
        await log.wait_job(first.id, "job.cancelled", limit=60)
        assert runtime.jobs.running_jobs() == {}


@pytest.mark.anyio
async def test_a_worker_killed_mid_job_the_job_finishes_on_the_other(
    tmp_path: Path, tiny_model: Path
) -> None:
    home = make_home(tmp_path, tiny_model)
    async with running_runtime(home, **TWO) as (runtime, log):
        await runtime.supervisor.wait_settled()
        # Both workers hold the model: the retry goes to the idle one that has it loaded.
        warm = [_job("a lighthouse"), _job("a dune")]
        for job in warm:
            await runtime.submit(job)
        for job in warm:
            await log.wait_job(job.id, "job.succeeded", limit=300)
        job = _job("a long river", steps=200)
        await runtime.submit(job)
        await log.wait_for(
            lambda: any(p.stage.value == "denoise" for p in _of_job(log, "job.progress", job.id)),
            "the job denoising",
            limit=300,
        )
        device = _started_on(log, job.id)[0]
        assert device is not None
        child = runtime.supervisor.children[f"generator:{device}"]
        pid = child.actor.describe()["pid"] if child.actor is not None else None
        assert isinstance(pid, int)
        os.kill(pid, signal.SIGKILL)
        done = await log.wait_job(job.id, "job.succeeded", "job.failed", limit=300)
        assert done.type.value == "job.succeeded", done.to_json()
        other = "cpu:1" if device == "cpu:0" else "cpu:0"
        assert _started_on(log, job.id) == [device, other]
        # The killed worker restarted (a new process) and the service is whole again.
        await log.wait_for(
            lambda: (
                sum(
                    1 for e in log.of_type("actor.started") if e.data.actor == f"generator:{device}"
                )
                >= 2
            ),
            "the killed worker restarted",
        )
        await log.wait_for(lambda: log.states()[-1:] == ["ready"], "ready again")


@pytest.mark.anyio
async def test_a_halted_worker_takes_only_its_device_out_until_reset(
    tmp_path: Path, tiny_model: Path
) -> None:
    home = make_home(tmp_path, tiny_model)
    # No restart allowed: the first crash of a worker exceeds its intensity.
    async with running_runtime(home, **TWO, worker_max_restarts=0) as (runtime, log):
        await runtime.supervisor.wait_settled()
        child = runtime.supervisor.children["generator:cpu:1"]
        pid = child.actor.describe()["pid"] if child.actor is not None else None
        assert isinstance(pid, int)
        os.kill(pid, signal.SIGKILL)
        await log.wait_for(lambda: log.states()[-1:] == ["degraded"], "degraded")
        snap = runtime.supervisor.snapshot()
        assert snap.state is State.DEGRADED
        assert "device:cpu:1" in snap.degraded_reasons
        # The other device serves.
        job = _job("a meadow")
        await _succeeds(runtime, log, job)
        assert _started_on(log, job.id) == ["cpu:0"]
        # Resetting a device in service is refused; the halted one comes back.
        with pytest.raises(Exception, match="in service"):
            await runtime.supervisor.ask(Reset(device="cpu:0"), State, timeout=10.0)
        await runtime.supervisor.ask(Reset(device="cpu:1"), State, timeout=10.0)
        await log.wait_for(lambda: log.states()[-1:] == ["ready"], "ready after the reset")
        assert runtime.supervisor.snapshot().degraded_reasons == {}
        with anyio.fail_after(60):
            await runtime.supervisor.wait_settled()
        assert runtime.jobs.lane_of_device("cpu:1") is not None


def test_state_names_each_device_and_reset_device_over_http_and_cli(
    tmp_path: Path, tiny_model: Path
) -> None:
    """A real server with two CPU workers: `/v1/state` names each device and its worker; a
    halted worker leaves the service degraded but ready (the other serves); `genvisor reset
    --device` brings it back."""
    home = make_home(tmp_path, tiny_model)
    env = {"GENVISOR_DEVICES": "cpu:0,cpu:1", "GENVISOR_WORKER_MAX_RESTARTS": "0"}
    with running_server(home, **env) as srv:
        read_events_until(
            f"{srv.ws_url}/v1/events?since=0",
            lambda e: e["type"] == "supervisor.transition" and e["data"]["to"] == "ready",
        )
        state = httpx.get(f"{srv.url}/v1/state").json()
        devices = {d["device"]: d for d in state["devices"]}
        assert set(devices) == {"cpu:0", "cpu:1"}
        assert devices["cpu:1"]["worker"] == "generator:cpu:1"
        assert all(d["in_service"] for d in devices.values())
        worker = next(c for c in state["children"] if c["id"] == "generator:cpu:1")
        os.kill(worker["pid"], signal.SIGKILL)
        read_events_until(
            f"{srv.ws_url}/v1/events?since=0",
            lambda e: e["type"] == "supervisor.transition" and e["data"]["to"] == "degraded",
        )
        state = httpx.get(f"{srv.url}/v1/state").json()
        assert "device:cpu:1" in state["degraded_reasons"]
        assert not {d["device"]: d for d in state["devices"]}["cpu:1"]["in_service"]
        assert httpx.get(f"{srv.url}/readyz").status_code == 200  # cpu:0 serves
        refused = _cli("reset", "--device", "cpu:0", "--url", srv.url)
        assert refused.returncode == 1
        assert "cpu:0 is in service" in refused.stderr
        unknown = httpx.post(f"{srv.url}/v1/supervisor/reset", params={"device": "cuda:7"})
        assert unknown.status_code == 409
        assert "no device cuda:7 here (devices: cpu:0, cpu:1)" in unknown.json()["message"]
        back = _cli("reset", "--device", "cpu:1", "--url", srv.url)
        assert back.returncode == 0, back.stderr
        assert back.stdout.startswith("cpu:1: its worker is starting again")
        read_events_until(
            f"{srv.ws_url}/v1/events?since=0",
            lambda e: (
                e["type"] == "supervisor.transition"
                and e["data"]["to"] == "ready"
                and "device:cpu:1 back in service" in e["data"]["reason"]
            ),
        )


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GENVISOR, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=server_env(Path("/nonexistent-home")),
    )
