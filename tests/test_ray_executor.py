"""`executor = "ray"` against a real local Ray cluster (`ray start --head`, two CPUs): a job runs
in a worker hosted by a Ray actor and produces its MP4; the actor killed through Ray mid-job is
a worker crash, and the supervisor retries the job, which succeeds on a new actor."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from hub_server import Fault, FaultKind, HubServer
from models_fixtures import MODEL, REPO_ID, hub, hub_session, tiny_dir

from tests.runtime_harness import make_home
from tests.server_process import ServerProcess, free_port, read_events_until, running_server

pytestmark = pytest.mark.slow

__all__ = ["hub", "hub_session", "tiny_dir"]

RAY = str(Path(sys.executable).with_name("ray"))

_KILL_ACTOR = """
import sys, ray
ray.init(address=sys.argv[1], namespace="genvisor", log_to_driver=False)
names = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
               if a["namespace"] == "genvisor" and a["name"].startswith(sys.argv[2]))
print(names[-1])
ray.kill(ray.get_actor(names[-1], namespace="genvisor"), no_restart=True)
"""


@pytest.fixture(scope="module")
def node_dirs() -> Path:
    """The Ray node's own data folder and Hugging Face cache (`ray_model_cache = "node"`)."""
    # Ray puts unix sockets under its temp dir: a pytest tmp_path is too long for them.
    return Path(tempfile.mkdtemp(prefix="gvray-", dir="/tmp"))


@pytest.fixture(scope="module")
def ray_cluster(node_dirs: Path) -> Iterator[str]:
    """A private Ray head on this host with two CPUs and no GPU, whose processes see their own
    GENVISOR_HOME and HF cache (as another host would); stopped with its processes."""
    port = free_port()
    temp = node_dirs / "ray"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENVISOR_", "HF_"))}
    env |= {"GENVISOR_HOME": str(node_dirs / "home"), "HF_HUB_CACHE": str(node_dirs / "hf")}
    proc = subprocess.Popen(
        [
            RAY,
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--num-cpus=2",
            "--num-gpus=0",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={temp}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env=env,
    )
    started = threading.Event()
    lines: list[str] = []

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "Ray runtime started" in line:
                started.set()
        started.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        if not started.wait(120) or proc.poll() is not None:
            raise RuntimeError("ray start failed:\n" + "".join(lines[-30:]))
        yield f"127.0.0.1:{port}"
    finally:
        # `ray stop` would stop every Ray cluster of the host; this one's processes are the
        # --block process's session, and SIGINT is its own way out (it stops its children).
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def _submit(srv: ServerProcess, **params: Any) -> str:
    body = {"prompt": "a lighthouse in the fog", "model": "tiny-wan", "seed": 5, **params}
    answer = httpx.post(f"{srv.url}/v1/jobs", json=body, timeout=30)
    assert answer.status_code == 202, answer.text
    job_id: str = answer.json()["id"]
    return job_id


def _until(srv: ServerProcess, job_id: str, *types: str, limit: float = 240) -> dict[str, Any]:
    return read_events_until(
        f"{srv.ws_url}/v1/events?since=0",
        lambda e: e["type"] in types and e["data"].get("job_id") == job_id,
        limit=limit,
    )


def test_a_job_runs_in_a_ray_actor_and_survives_the_actor_being_killed(
    tmp_path: Path, tiny_model: Path, ray_cluster: str
) -> None:
    home = make_home(tmp_path, tiny_model)
    env = {"GENVISOR_EXECUTOR": "ray", "GENVISOR_RAY_ADDRESS": ray_cluster}
    with running_server(home, startup_timeout=120, **env) as srv:
        read_events_until(
            f"{srv.ws_url}/v1/events?since=0",
            lambda e: e["type"] == "supervisor.transition" and e["data"]["to"] == "ready",
            limit=180,
        )
        generator = _generator(srv)
        assert generator["worker_place"].startswith("in Ray actor genvisor-"), generator
        # The worker is a child of the Ray actor's process, not of the server.
        worker = psutil.Process(generator["pid"])
        assert "WorkerHost" in " ".join(worker.parent().cmdline())
        assert worker.parent().pid != srv.proc.pid

        first = _submit(srv, width=32, height=32, frames=5, steps=2)
        done = _until(srv, first, "job.succeeded", "job.failed")
        assert done["type"] == "job.succeeded", done
        job = httpx.get(f"{srv.url}/v1/jobs/{first}").json()
        assert Path(job["output_path"]).stat().st_size > 0
        assert job["output_path"].endswith(".mp4")

        # Long enough to be killed in its denoise loop (20 steps at 256x256x17: seconds).
        second = _submit(srv, width=256, height=256, frames=17, steps=20)
        read_events_until(
            f"{srv.ws_url}/v1/events?since=0",
            lambda e: (
                e["type"] == "job.progress"
                and e["data"].get("job_id") == second
                and e["data"].get("stage") == "denoise"
            ),
            limit=120,
        )
        prefix = generator["worker_place"].split()[3].rsplit("-", 1)[0]
        killed = subprocess.run(
            [sys.executable, "-c", _KILL_ACTOR, ray_cluster, prefix],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert killed.returncode == 0, killed.stderr
        retry = _until(srv, second, "job.retrying", "job.succeeded", "job.failed")
        assert retry["type"] == "job.retrying", retry
        assert "Ray actor" in str(retry["data"]), retry
        done = _until(srv, second, "job.succeeded", "job.failed")
        assert done["type"] == "job.succeeded", done
        job = httpx.get(f"{srv.url}/v1/jobs/{second}").json()
        assert job["attempts"] == 2, job
        # The supervisor started a new actor (Ray's own restarts are off).
        again = _generator(srv)
        assert again["worker_place"] != generator["worker_place"], again
        assert again["restarts_in_window"] == 1, again


def test_a_gpu_device_on_a_cluster_without_gpus_is_refused_with_what_it_has(
    tmp_path: Path, tiny_model: Path, ray_cluster: str
) -> None:
    """Ray would keep an actor that asks for a GPU no node has pending for ever: the worker's
    start fails at once and says what the cluster has."""
    home = make_home(tmp_path, tiny_model)
    env = {
        "GENVISOR_EXECUTOR": "ray",
        "GENVISOR_RAY_ADDRESS": ray_cluster,
        "GENVISOR_DEVICES": "cuda:0",
        "GENVISOR_WORKER_MAX_RESTARTS": "0",
    }
    with running_server(home, startup_timeout=120, **env) as srv:
        read_events_until(
            f"{srv.ws_url}/v1/events?since=0",
            lambda e: e["type"] == "supervisor.transition" and e["data"]["to"] == "halted",
            limit=120,
        )
        state = httpx.get(f"{srv.url}/v1/state", timeout=30).json()
        child = next(c for c in state["children"] if c["id"] == "generator:cuda:0")
        message = child["last_error"]["message"]
        assert f"the Ray cluster at {ray_cluster} has no GPU for device cuda:0" in message
        assert "(it has: CPU 2)" in message


def test_each_node_makes_the_model_available_in_its_own_cache(
    tmp_path: Path, tiny_model: Path, ray_cluster: str, node_dirs: Path, hub: HubServer
) -> None:
    """`ray_model_cache = "node"`: the server resolves the model on its host (its own cache);
    the node hosting the worker pulls the same model into its own cache through genvisor's pull
    (the loopback Hub sees a second download), and rebuilds a tiny build in its own home."""
    home = make_home(tmp_path, tiny_model)
    env = {
        "GENVISOR_EXECUTOR": "ray",
        "GENVISOR_RAY_ADDRESS": ray_cluster,
        "GENVISOR_RAY_MODEL_CACHE": "node",
        "GENVISOR_HF_ENDPOINT": hub.endpoint,
        "GENVISOR_HF_CACHE_DIR": str(tmp_path / "server-hf"),
        "GENVISOR_DOWNLOAD_BACKOFF_BASE": "0.01",
    }
    with running_server(home, startup_timeout=120, **env) as srv:
        read_events_until(
            f"{srv.ws_url}/v1/events?since=0",
            lambda e: e["type"] == "supervisor.transition" and e["data"]["to"] == "ready",
            limit=180,
        )
        pulled = httpx.post(f"{srv.url}/v1/models/{MODEL}/pull?wait=true", timeout=120)
        assert pulled.status_code == 202, pulled.text
        # The node's first pull fails for good (every retry answered 500): the job's load
        # fails once, with the Hub's error.
        hub.add_fault(Fault(FaultKind.STATUS_500, path="model_index.json", method="GET", times=5))
        failing = _submit(srv, model=MODEL, width=32, height=32, frames=5, steps=2)
        done = _until(srv, failing, "job.succeeded", "job.failed")
        assert done["type"] == "job.failed", done["type"]
        assert done["data"]["error"]["code"] == "NET.SERVER_ERROR", json.dumps(done["data"])
        assert "(model_index.json): the Hub answered HTTP 500" in done["data"]["error"]["message"]
        # The worker never saw that job's Generate (dropped with its failed Load): the next
        # job on the same worker is answered as its own.
        hub_job = _submit(srv, model=MODEL, width=32, height=32, frames=5, steps=2)
        done = _until(srv, hub_job, "job.succeeded", "job.failed")
        assert done["type"] == "job.succeeded", json.dumps(done["data"])
        repo = "models--" + REPO_ID.replace("/", "--")
        assert list((tmp_path / "server-hf" / repo / "snapshots").glob("*/model_index.json"))
        assert list((node_dirs / "hf" / repo / "snapshots").glob("*/model_index.json"))
        # The server's pull, the node's failing tries, then the node's own pull.
        assert len(hub.gets("model_index.json")) >= 3

        tiny_job = _submit(srv, width=32, height=32, frames=5, steps=2)
        done = _until(srv, tiny_job, "job.succeeded", "job.failed")
        assert done["type"] == "job.succeeded", done
        assert (node_dirs / "home" / "models" / "tiny-wan" / "model_index.json").is_file()
        assert _generator(srv)["restarts_in_window"] == 0  # one worker served all three


def _generator(srv: ServerProcess) -> dict[str, Any]:
    state = httpx.get(f"{srv.url}/v1/state", timeout=30).json()
    child: dict[str, Any] = next(c for c in state["children"] if c["id"] == "generator")
    return child
