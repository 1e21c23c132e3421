"""An image job under a real memory cap: it runs out of memory, the ladder recovers it, and
every attempt starts from the same stored first frame."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import anyio
import numpy as np
import pytest
from PIL import Image

from supervisor.core.params import GenerationParams, JobInputs
from supervisor.jobs import Job, new_job_id
from supervisor.jobs.image_checks import inspect_image
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
    pixels = np.random.default_rng(5).integers(0, 256, (240, 416, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    data = buffer.getvalue()
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
    assert kept.changes
    assert kept.inputs == JobInputs(image=stored.id)
    # Every attempt ran from the stored original, fitted to that attempt's size (a lower
    # resolution rung refits it): the video's sidecar names the input and the size it used.
    assert kept.output_path is not None
    sidecar = json.loads(Path(kept.output_path).with_suffix(".json").read_text())
    assert sidecar["inputs"] == {"image": stored.id}
    assert sidecar["params_used"] == kept.result["params_used"]
