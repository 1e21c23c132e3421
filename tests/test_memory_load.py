"""Out-of-memory while loading a model, for real: tiny-wan widened to ~490 MB of weights
(`make-tiny --weights-mb`) under a memory cap that leaves less than its load needs."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.worker.tiny_wan import FFN_BYTES_PER_UNIT, build_tiny_wan
from supervisor.core.params import GenerationParams
from supervisor.jobs import Job, new_job_id
from supervisor.supervision.state_machine import State
from tests.registry_entries import local_tiny_entry
from tests.runtime_harness import make_home, running_runtime

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

HEAVY = "tiny-wan-heavy"
# Measured here: the worker starts in ~0.9 GiB of address space and loading ~490 MB of float32
# weights adds ~1.1 GiB; tiny-wan (293 KB) loads and runs under the same cap.
CAP = "1536MiB"
REGISTRY = local_tiny_entry(HEAVY, "tiny-wan with ~490 MB of weights", weights_bytes=490_000_000)


def _job(model: str) -> Job:
    params = GenerationParams(prompt="a lighthouse", width=32, height=32, num_frames=5, steps=2)
    return Job(id=new_job_id(), model=model, params=params)


async def test_out_of_memory_at_load_fails_clearly_without_walking_the_ladder(
    tmp_path: Path, tiny_model: Path
) -> None:
    home = make_home(tmp_path, tiny_model)
    build = build_tiny_wan(home / "models" / HEAVY, ffn_dim=490_000_000 // FFN_BYTES_PER_UNIT)
    assert build.size_bytes > 480_000_000
    registry = tmp_path / "models.toml"
    registry.write_text(REGISTRY)
    async with running_runtime(home, device_memory_limit=CAP, models_file=registry) as (
        runtime,
        log,
    ):
        await runtime.supervisor.wait_settled()
        job = await runtime.submit(_job(HEAVY))
        failed = await log.wait_job(job.id, "job.failed", "job.succeeded", limit=120)
        assert failed.type.value == "job.failed", failed.to_json()
        error = failed.data.error  # type: ignore[attr-defined]
        assert error["code"] == "VRAM.EXHAUSTED"
        # A real allocation failure inside diffusers' loader, not a prediction.
        assert error["technical"]["stage"] == "load"
        assert (
            error["technical"]["type"] == "MemoryError"
            or "MemoryError" in (error["technical"]["traceback"])
        )
        assert error["message"].startswith(f"Loading {HEAVY} needs about ")
        assert "memory limit (1.5 GiB)" in error["message"]
        assert any("device_memory_limit" in s for s in error["suggestions"])
        assert not any("GPU" in s or "tiling" in s for s in error["suggestions"])
        # No rung lowers a load on a CPU: nothing was re-run.
        assert log.of_type("job.retrying") == []
        # The model is unusable here (degraded, with the reason); the service stays up.
        await log.wait_for(lambda: "degraded" in log.states(), "categorizing -> degraded")
        failure = next(r for r in runtime.supervisor.machine.history if r.to_state is State.FAILED)
        # MemoryError has no message: the reason names the class rather than end in ": ".
        assert "failed at load: " in failure.reason
        assert not failure.reason.endswith(": ")
        last = runtime.supervisor.machine.history[-1]
        assert last.to_state is State.DEGRADED
        assert last.trigger.value == "dismiss_degraded"
        assert "no rung lowers what loading the weights needs" in last.reason
        assert "halted" not in log.states()
        reason = runtime.supervisor.snapshot().degraded_reasons[f"model:{HEAVY}"]
        assert reason.startswith(f"{HEAVY} cannot be loaded here: Loading {HEAVY} needs about ")

        # No reset needed: a fresh worker under the same cap still runs the small model.
        small = await runtime.submit(_job("tiny-wan"))
        done = await log.wait_job(small.id, "job.succeeded", "job.failed", limit=120)
        assert done.type.value == "job.succeeded", done.to_json()
