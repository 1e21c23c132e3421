"""An image job under a real memory cap: it runs out of memory, the ladder recovers it, and
every attempt starts from the same stored first frame."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import anyio
import pytest

from supervisor.core.params import GenerationParams, JobInputs
from supervisor.jobs import Job, new_job_id
from supervisor.jobs.image_checks import inspect_image
from tests.image_files import noise_png
from tests.runtime_harness import make_home, running_runtime

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

CAP = "2GiB"  # as tests/test_memory_recovery.py: 480x832x17 does not fit at decode under it


async def test_an_image_job_out_of_memory_recovers_with_its_image(
    tmp_path: Path, tiny_model: Path
) -> None:
    home = make_home(tmp_path, tiny_model)
    cmd = [
        sys.executable,
        "-m",
        "actors.worker.tiny_rebuild",
        str(home / "models" / "tiny-wan-i2v"),
        "i2v",
    ]
    with anyio.fail_after(120):
        await anyio.run_process(cmd)
    data = noise_png(416, 240, seed=5)
    async with running_runtime(home, device_memory_limit=CAP) as (runtime, log):
        stored = runtime.inputs.put(data, inspect_image(data, max_pixels=10**8))
        params = GenerationParams(
            prompt="a harbour at night", width=832, height=480, num_frames=17, steps=2, seed=3
        )
        job = Job(
            id=new_job_id(),
            model="tiny-wan-i2v",
            params=params,
            options=runtime.base_options(),
            inputs=JobInputs(image=stored.id),
        )
        await runtime.submit(job)
        done = await log.wait_job(job.id, "job.succeeded", "job.failed", limit=400)
        assert done.type.value == "job.succeeded", done.to_json()[:2000]
        kept = await runtime.store.get(job.id)
        assert kept is not None
        assert kept.result is not None
    retries = [e.data for e in log.of_type("job.retrying") if e.data.job_id == job.id]  # type: ignore[attr-defined]
    assert retries, "expected a real out-of-memory first"
    assert all(r.error_code == "VRAM.EXHAUSTED" for r in retries)  # type: ignore[attr-defined]
    # The first frame's VAE encode (inside the image pipeline, before denoising) is what ran out:
    # VAE tiling lowers it, so the job recovers with nothing changed in its output.
    assert [(c.rung, c.decode_only, c.changes_output) for c in kept.changes] == [
        ("vae_tiling", False, False)
    ]
    assert "VAE encode of the first frame" in kept.changes[0].text
    assert kept.inputs == JobInputs(image=stored.id)
    # Every attempt ran from the stored original, fitted to that attempt's size (a lower
    # resolution rung refits it): the video's sidecar names the input and the size it used.
    assert kept.output_path is not None
    sidecar = json.loads(Path(kept.output_path).with_suffix(".json").read_text())
    assert sidecar["inputs"] == {"image": stored.id}
    assert sidecar["params_used"] == kept.result["params_used"]


async def test_a_fallback_that_takes_no_image_is_not_used_for_an_image_job(
    tmp_path: Path, tiny_model: Path
) -> None:
    """The image model is missing and its registered fallback is text-only: the image job fails
    with its own model's reason instead of running on a model that would ignore the image."""
    home = make_home(tmp_path, tiny_model)
    registry = tmp_path / "models.toml"
    registry.write_text(
        '[models."never-built-i2v"]\n'
        'source = "local"\nlocal_path = "models/never-built-i2v"\n'
        'pipeline_class = "WanImageToVideoPipeline"\nfallback = "tiny-wan"\n'
        "defaults = { width = 32, height = 32, num_frames = 5, steps = 2, guidance_scale = 1.0,"
        " fps = 8 }\n"
        "limits = { max_width = 256, max_height = 256, max_frames = 33, max_steps = 100 }\n"
        "memory = { weights_bytes = 1, activation_base_bytes = 1,"
        " activation_bytes_per_latent_token = 1.0 }\n"
    )
    data = noise_png(32, 32)
    async with running_runtime(home, models_file=registry) as (runtime, log):
        stored = runtime.inputs.put(data, inspect_image(data, max_pixels=10**6))
        params = GenerationParams(prompt="waves", width=32, height=32, num_frames=5, steps=2)
        job = Job(
            id=new_job_id(),
            model="never-built-i2v",
            params=params,
            options=runtime.base_options(),
            inputs=JobInputs(image=stored.id),
        )
        await runtime.submit(job)
        done = await log.wait_job(job.id, "job.succeeded", "job.failed", limit=120)
    assert done.type.value == "job.failed"
    assert done.data.error["code"].startswith("MODEL.")  # type: ignore[attr-defined]
    assert "tiny-wan" not in str(done.data.error.get("message"))  # type: ignore[attr-defined]
