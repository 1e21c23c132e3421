"""Damaged and missing models under the supervisor: repair, re-run, fall back, explain."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from supervisor.core.params import GenerationParams
from supervisor.jobs import Job, JobStatus, new_job_id
from tests.registry_entries import local_tiny_entry
from tests.runtime_harness import EventLog, make_home, running_runtime

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def _job(model: str = "tiny-wan") -> Job:
    params = GenerationParams(prompt="a kite", width=32, height=32, num_frames=5, steps=2)
    return Job(id=new_job_id(), model=model, params=params)


def _events(log: EventLog, type_: str) -> list[object]:
    return [e.data for e in log.of_type(type_)]


async def test_truncated_weights_are_repaired_before_the_load(
    tmp_path: Path, tiny_model: Path
) -> None:
    home = make_home(tmp_path, tiny_model)
    weights = next((home / "models" / "tiny-wan" / "transformer").glob("*.safetensors"))
    original = weights.read_bytes()
    weights.write_bytes(original[: len(original) // 2])
    async with running_runtime(home) as (runtime, log):
        await runtime.supervisor.wait_settled()
        job = await runtime.submit(_job())
        done = await log.wait_job(job.id, "job.succeeded", "job.failed")
        assert done.type.value == "job.succeeded", done.to_json()
        assert _events(log, "model.repaired")
        stored = await runtime.store.get(job.id)
        assert stored is not None
        assert [c.rung for c in stored.changes] == ["repair_model"]
        assert weights.read_bytes() == original  # rebuilt deterministically


async def test_a_load_that_fails_on_damaged_files_is_repaired_and_rerun(
    tmp_path: Path, tiny_model: Path
) -> None:
    home = make_home(tmp_path, tiny_model)
    config = home / "models" / "tiny-wan" / "transformer" / "config.json"
    config.write_text("{ this is not json")  # not a weights file: only the load notices
    async with running_runtime(home) as (runtime, log):
        await runtime.supervisor.wait_settled()
        job = await runtime.submit(_job())
        done = await log.wait_job(job.id, "job.succeeded", "job.failed")
        retrying = await log.wait_job(job.id, "job.retrying", limit=5)
        assert retrying.data.error_code == "MODEL.CORRUPTED"  # type: ignore[attr-defined]
        assert done.type.value == "job.succeeded", done.to_json()
        assert json.loads(config.read_text())["_class_name"] == "WanTransformer3DModel"
        # recovering -> ready follows job.succeeded in the same step: wait for it to arrive.
        await log.wait_for(lambda: log.states().count("ready") >= 2, "recovering -> ready")
        walk = log.states()
        assert walk[walk.index("failed") :][:4] == ["failed", "categorizing", "recovering", "ready"]
        stored = await runtime.store.get(job.id)
        assert stored is not None
        assert stored.attempts == 2


async def test_missing_model_runs_on_its_fallback_and_degrades(
    tmp_path: Path, tiny_model: Path
) -> None:
    home = make_home(tmp_path, tiny_model)
    user_models = tmp_path / "models.toml"
    user_models.write_text(
        local_tiny_entry("tiny-wan-large", "not built: runs on its fallback", fallback="tiny-wan")
    )
    async with running_runtime(home, models_file=user_models) as (runtime, log):
        await runtime.supervisor.wait_settled()
        job = await runtime.submit(_job("tiny-wan-large"))
        done = await log.wait_job(job.id, "job.succeeded", "job.failed")
        assert done.type.value == "job.succeeded", done.to_json()
        stored = await runtime.store.get(job.id)
        assert stored is not None
        assert stored.status is JobStatus.SUCCEEDED
        assert stored.result is not None
        assert stored.result["model"] == "tiny-wan"
        assert stored.result["model_requested"] == "tiny-wan-large"
        assert stored.changes[-1].rung == "fallback_model"
        assert runtime.supervisor.state.value == "degraded"
        assert "tiny-wan" in runtime.supervisor.snapshot().degraded_reasons["model"]
