"""Real worker processes running the real tiny Wan pipeline."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import av
import numpy as np
import pytest

from actors.worker.protocol import (
    Cancel,
    Cancelled,
    Done,
    Failed,
    Generate,
    GenerationParams,
    Heartbeat,
    Load,
    Loaded,
    Offload,
    PipelineOptions,
    Progress,
    WorkerMessage,
)
from actors.worker.spawn import WorkerHandle, WorkerLaunch, spawn_worker
from supervisor.core.stages import Stage

pytestmark = pytest.mark.slow

TERMINAL = (Done, Failed, Cancelled, Loaded)
SMALL = GenerationParams(prompt="a red fox", width=32, height=32, num_frames=5, steps=2, seed=7)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Built by the CLI in a subprocess: this test process stays free of torch.
    out = tmp_path_factory.mktemp("models") / "tiny-wan"
    cmd = [sys.executable, "-m", "supervisor.cli.main", "models", "make-tiny", "--out", str(out)]
    subprocess.run(cmd, capture_output=True, timeout=120, check=True)
    return out


@pytest.fixture
async def worker(tmp_path: Path, tiny_model: Path) -> AsyncIterator[WorkerHandle]:
    handle = await spawn_worker(WorkerLaunch(log_path=tmp_path / "worker.log"))
    try:
        await handle.send(Load(model_path=str(tiny_model), model_name="tiny-wan"))
        loaded = await until_terminal(handle)
        assert isinstance(loaded[-1], Loaded), loaded[-1]
        yield handle
    finally:
        await handle.shutdown(grace_s=5.0)


async def until_terminal(handle: WorkerHandle, limit_s: float = 120.0) -> list[WorkerMessage]:
    seen: list[WorkerMessage] = []
    with anyio.fail_after(limit_s):
        while True:
            msg = await handle.receive()
            seen.append(msg)
            if isinstance(msg, TERMINAL):
                return seen


def read_frames(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]


def read_json(path: str) -> dict[str, object]:
    data: dict[str, object] = json.loads(Path(path).read_text())
    return data


def visible_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


@pytest.mark.anyio
async def test_small_job_writes_playable_mp4_sidecar_and_progress_in_order(
    worker: WorkerHandle, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    await worker.send(Generate(job_id="job-a", params=SMALL, output_dir=str(out)))
    seen = await until_terminal(worker)
    done = seen[-1]
    assert isinstance(done, Done), done

    progress = [(m.stage, m.step, m.total) for m in seen if isinstance(m, Progress)]
    assert progress == [
        (Stage.ENCODE, None, None),
        (Stage.DENOISE, 1, 2),
        (Stage.DENOISE, 2, 2),
        (Stage.DECODE, None, None),
        (Stage.SAVE, None, None),
    ]
    assert list(done.timings) == [Stage.ENCODE, Stage.DENOISE, Stage.DECODE, Stage.SAVE]

    frames = read_frames(Path(done.output_path))
    assert len(frames) == 5
    assert frames[0].shape == (32, 32, 3)
    sidecar = read_json(done.sidecar_path)
    assert sidecar["prompt"] == "a red fox"
    assert sidecar["seed"] == 7
    assert sidecar["model"] == "tiny-wan"
    assert sidecar["params_used"] == SMALL.model_dump(mode="json")
    assert visible_files(out) == ["job-a.json", "job-a.mp4"]

    # Same seed, same frames; another seed, other frames.
    await worker.send(Generate(job_id="job-b", params=SMALL, output_dir=str(out)))
    again = (await until_terminal(worker))[-1]
    assert isinstance(again, Done)
    repeated = read_frames(Path(again.output_path))
    assert all(np.array_equal(a, b) for a, b in zip(frames, repeated, strict=True))
    other = SMALL.model_copy(update={"seed": 8})
    await worker.send(Generate(job_id="job-c", params=other, output_dir=str(out)))
    third = (await until_terminal(worker))[-1]
    assert isinstance(third, Done)
    assert not np.array_equal(frames[-1], read_frames(Path(third.output_path))[-1])


@pytest.mark.anyio
async def test_cheap_option_change_does_not_reload_and_cpu_offload_is_refused(
    worker: WorkerHandle, tiny_model: Path
) -> None:
    await worker.send(
        Load(model_path=str(tiny_model), options=PipelineOptions(vae_tiling=True, vae_slicing=True))
    )
    loaded = (await until_terminal(worker))[-1]
    assert isinstance(loaded, Loaded)
    assert loaded.reloaded is False
    assert loaded.options.vae_tiling is True

    await worker.send(
        Load(model_path=str(tiny_model), options=PipelineOptions(offload=Offload.MODEL))
    )
    failed = (await until_terminal(worker))[-1]
    assert isinstance(failed, Failed)
    assert failed.report.stage == "load"
    assert failed.report.exc_type.endswith("UnsupportedOption")
    assert "not supported on cpu" in failed.report.message


@pytest.mark.anyio
async def test_a_generate_behind_a_failed_load_is_dropped_not_run_on_the_old_model(
    worker: WorkerHandle, tmp_path: Path, tiny_model: Path
) -> None:
    out = tmp_path / "out"
    # The control side pipelines Load then Generate; this Load fails (no such folder).
    await worker.send(Load(model_path=str(tmp_path / "missing"), model_name="missing"))
    await worker.send(Generate(job_id="job-a", params=SMALL, output_dir=str(out)))
    failed = (await until_terminal(worker))[-1]
    assert isinstance(failed, Failed)
    assert failed.job_id is None
    assert failed.report.stage == "load"
    # The next attempt loads again; the first frame that ends it is its own, nothing stale
    # from job-a (no second failure, and no run on tiny-wan, still in memory before the Load).
    await worker.send(Load(model_path=str(tiny_model), model_name="tiny-wan"))
    await worker.send(Generate(job_id="job-a", params=SMALL, output_dir=str(out)))
    loaded = await until_terminal(worker)
    assert isinstance(loaded[-1], Loaded), loaded
    done = await until_terminal(worker)
    assert isinstance(done[-1], Done), done
    assert done[-1].job_id == "job-a"
    assert not [m for m in loaded + done if isinstance(m, Failed)]


@pytest.mark.anyio
async def test_cancel_mid_denoise_stops_at_next_step_and_leaves_no_file(
    worker: WorkerHandle, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    long_job = SMALL.model_copy(update={"steps": 400, "width": 64, "height": 64})
    await worker.send(Generate(job_id="job-x", params=long_job, output_dir=str(out)))
    steps: list[int] = []
    with anyio.fail_after(120):
        while True:
            msg = await worker.receive()
            if isinstance(msg, Progress) and msg.stage is Stage.DENOISE:
                assert msg.step is not None
                steps.append(msg.step)
                if len(steps) == 1:
                    await worker.send(Cancel(job_id="job-x"))
            if isinstance(msg, TERMINAL):
                break
    assert isinstance(msg, Cancelled), msg
    assert msg.stage is Stage.DENOISE
    # The flag is read at each step's end: the loop stops at the step running when the cancel
    # arrived (plus the steps that ran while the message was in flight), far before the end.
    assert steps[-1] < long_job.steps
    assert visible_files(out) == []


@pytest.mark.anyio
async def test_decode_oom_under_cap_keeps_latents_and_tiled_decode_only_succeeds(
    tmp_path: Path, tiny_model: Path
) -> None:
    """480x832x17 fails in the VAE decode under a 2 GiB address-space cap with the real CPU
    allocator error; the kept latents decode under the same cap with VAE tiling, in a fresh
    worker (as the supervisor does: a process that hit the cap keeps memory mapped)."""
    out = tmp_path / "out"
    launch = WorkerLaunch(
        log_path=tmp_path / "worker.log", memory_limit="2GiB", heartbeat_interval=0.2
    )
    handle = await spawn_worker(launch)
    try:
        assert handle.ready.memory_limit_bytes == 2 * 1024**3
        assert handle.ready.baseline_address_space_bytes is not None
        assert handle.ready.baseline_address_space_bytes < 2 * 1024**3
        await handle.send(Load(model_path=str(tiny_model), model_name="tiny-wan"))
        assert isinstance((await until_terminal(handle))[-1], Loaded)

        big = GenerationParams(prompt="a red fox", width=832, height=480, num_frames=17, steps=2)
        await handle.send(Generate(job_id="job-big", params=big, output_dir=str(out)))
        failed = (await until_terminal(handle))[-1]
        assert isinstance(failed, Failed), failed
        assert failed.job_id == "job-big"
        assert failed.report.stage == "decode"
        assert "DefaultCPUAllocator: can't allocate memory" in failed.report.message
        assert failed.latents_path is not None
        assert Path(failed.latents_path).name == "job-big.latents.safetensors"
        assert visible_files(out) == ["job-big.latents.safetensors"]
        await handle.shutdown()
        handle = await spawn_worker(launch)
        await handle.send(Load(model_path=str(tiny_model), model_name="tiny-wan"))
        assert isinstance((await until_terminal(handle))[-1], Loaded)

        retry = Generate(
            job_id="job-big-retry",
            params=big,
            options=PipelineOptions(vae_tiling=True),
            output_dir=str(out),
            decode_only_from=failed.latents_path,
            applied_changes=("vae_tiling",),
        )
        await handle.send(retry)
        seen = await until_terminal(handle, limit_s=300)
        done = seen[-1]
        assert isinstance(done, Done), done
        assert [m.stage for m in seen if isinstance(m, Progress)] == [
            Stage.DECODE,
            Stage.SAVE,
        ]
        # Heartbeats keep coming from their own thread while the decode holds the job thread.
        busy = [m for m in seen if isinstance(m, Heartbeat) and m.busy_job_id == "job-big-retry"]
        assert len(busy) >= 2
        frames = read_frames(Path(done.output_path))
        assert len(frames) == 17
        assert frames[0].shape == (480, 832, 3)
        assert read_json(done.sidecar_path)["applied_changes"] == ["vae_tiling"]
    finally:
        await handle.shutdown()
