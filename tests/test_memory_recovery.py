"""Out-of-memory that heals itself, under a real memory cap with real allocation failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.core.params import GenerationParams
from supervisor.jobs import Job, JobStatus, new_job_id
from tests.runtime_harness import EventLog, make_home, running_runtime

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

# Measured here: tiny Wan at 480x832x17 runs out of address space at VAE decode under a 2 GiB
# RLIMIT_AS and fits with VAE tiling.
CAP = "2GiB"


def _big_job(**kw: object) -> Job:
    params = GenerationParams(
        prompt="a harbour at night", width=832, height=480, num_frames=17, steps=2, seed=11
    )
    return Job(id=new_job_id(), model="tiny-wan", params=params, **kw)  # type: ignore[arg-type]


def _of_job(log: EventLog, type_: str, job_id: str) -> list[object]:
    return [e.data for e in log.of_type(type_) if getattr(e.data, "job_id", None) == job_id]


async def test_oom_at_decode_recovers_at_tiling_then_is_remembered(
    tmp_path: Path, tiny_model: Path
) -> None:
    home = make_home(tmp_path, tiny_model)
    async with running_runtime(home, device_memory_limit=CAP) as (runtime, log):
        await runtime.supervisor.wait_settled()
        first = await runtime.submit(_big_job())
        done = await log.wait_job(first.id, "job.succeeded", "job.failed", limit=300)
        assert done.type.value == "job.succeeded", done.to_json()
        stored = await runtime.store.get(first.id)
        assert stored is not None
        rungs = [c.rung for c in stored.changes]
        assert "vae_tiling" in rungs
        # The seeded pre-flight figures are low (bench/recovery.py: about -58 %), so on a fresh
        # home the job starts as asked and really runs out of address space at decode.
        retries = _of_job(log, "job.retrying", first.id)
        assert len(retries) == 1, "expected one real out-of-memory at baseline, then tiling"
        assert retries[0].error_code == "VRAM.EXHAUSTED"  # type: ignore[attr-defined]
        change = retries[0].change  # type: ignore[attr-defined]
        assert change["rung"] == "vae_tiling"
        assert "because memory ran out at VAE decode" in change["text"]
        assert change["decode_only"] is True
        # The transition out of recovering follows job.succeeded in the same step: wait for it
        # to reach this subscriber rather than read the log at the first event.
        await log.wait_for(
            lambda: log.states()[-1:] == ["ready"] and "recovering" in log.states(),
            "recovering -> ready",
        )
        walk = log.states()
        assert walk[walk.index("failed") :][:4] == ["failed", "categorizing", "recovering", "ready"]
        # A recovery that worked leaves the service whole: the learned strategy keeps what the
        # job needed, nothing is "degraded".
        assert runtime.supervisor.snapshot().degraded_reasons == {}
        # Every attempt and its result is an event (DESIGN.md, failure pipeline step 4).
        await log.wait_for(
            lambda: bool(_of_job(log, "recovery.result", first.id)), "recovery.result"
        )
        attempts = _of_job(log, "recovery.attempt", first.id)
        results = _of_job(log, "recovery.result", first.id)
        assert [(a.step, a.error_code) for a in attempts] == [("vae_tiling", "VRAM.EXHAUSTED")]  # type: ignore[attr-defined]
        assert [(r.step, r.ok) for r in results] == [("vae_tiling", True)]  # type: ignore[attr-defined]
        # Decode-only retry: the two denoising steps ran once, not twice.
        denoise = [
            p
            for p in _of_job(log, "job.progress", first.id)
            if p.stage.value == "denoise" and p.step  # type: ignore[attr-defined]
        ]
        assert len(denoise) == 2
        assert stored.result is not None
        assert stored.result["options_used"]["vae_tiling"] is True
        succeeded = _of_job(log, "job.succeeded", first.id)
        assert succeeded[0].changes == [c.as_dict() for c in stored.changes]  # type: ignore[attr-defined]

        # The same request again starts at the learned rung and never runs out of memory.
        second = await runtime.submit(_big_job())
        done = await log.wait_job(second.id, "job.succeeded", "job.failed", limit=300)
        assert done.type.value == "job.succeeded", done.to_json()
        assert _of_job(log, "job.retrying", second.id) == []
        again = await runtime.store.get(second.id)
        assert again is not None
        assert again.changes[0].origin.value in ("learned", "preflight")
        assert again.attempts == 1
        learned = runtime.strategies.all()
        assert [s.rung.value for s in learned] == ["vae_tiling"]
        # Each job's own peak became a calibration sample; the seed figures were low.
        assert again.result is not None
        assert again.result["peak_growth_bytes"] > 0
        # The sample is written on a thread after the job's outcome (off the loop's critical
        # path): wait for it rather than read the store at job.succeeded.
        await log.wait_for(
            lambda: len(runtime.calibration.samples("tiny-wan", "cpu")) >= 2,
            "the second job's calibration sample",
            limit=30,
        )
        assert runtime.calibration.calibration("tiny-wan", "cpu").decode_scale > 1.0

        # A request that can not fit at any rung, output changes refused, is refused up front.
        huge = _big_job(allow_output_changes=False)
        huge.params = GenerationParams(
            prompt="too big", width=1280, height=1280, num_frames=81, steps=2, seed=1
        )
        await runtime.submit(huge)
        failed = await log.wait_job(huge.id, "job.failed", "job.succeeded", limit=60)
        assert failed.type.value == "job.failed"
        assert _of_job(log, "job.started", huge.id) == []
        error = failed.data.error  # type: ignore[attr-defined]
        assert error["code"] == "VRAM.EXHAUSTED"
        assert "even at the last rung" in error["technical"]["message"]
        assert "GiB" in error["technical"]["message"] or "MiB" in error["technical"]["message"]
        assert (await runtime.store.get(huge.id)).status is JobStatus.FAILED  # type: ignore[union-attr]
