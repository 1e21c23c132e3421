"""The VRAM ladder as a recovery planner: pure decisions, no worker needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from actors.worker.protocol import Failed
from supervisor.core.params import GenerationParams, PipelineOptions
from supervisor.errors import ErrorReport, Stage
from supervisor.jobs import Job, new_job_id
from supervisor.recovery.diagnosis import Diagnosis
from supervisor.recovery.ladder import load_ladder
from supervisor.recovery.learned_strategies import LearnedStrategies
from supervisor.recovery.memory import MemoryRecovery

OOM = Diagnosis(
    code="VRAM.EXHAUSTED",
    category="vram_memory",
    recoverable=True,
    poisons_context=False,
    user_error={},
)


def _recovery(tmp_path: Path, device: str = "cpu", max_attempts: int = 6) -> MemoryRecovery:
    return MemoryRecovery(
        load_ladder(),
        LearnedStrategies(tmp_path / "vram.sqlite3"),
        device=device,
        device_name=device,
        max_attempts=max_attempts,
        memory_key=lambda: (2 * 1024**3, 24 * 1024**3),
        budget=lambda job: None,
        estimate=lambda job, options, params: None,
        reserve=0,
    )


def _job(device: str = "cpu", allow: bool = True) -> Job:
    params = GenerationParams(prompt="p", width=1280, height=720, num_frames=81, steps=30)
    return Job(
        id=new_job_id(),
        model="tiny-wan",
        params=params,
        options=PipelineOptions(device=device),
        allow_output_changes=allow,
    )


def _failed(stage: Stage, latents: str | None = None) -> Failed:
    report = ErrorReport(exc_type="RuntimeError", message="out of memory", stage=stage)
    return Failed(job_id="x", report=report, latents_path=latents)


def _walk(recovery: MemoryRecovery, job: Job, stage: Stage = Stage.DENOISE) -> list[str]:
    rungs = []
    for _ in range(20):
        step = recovery.plan(job, OOM, _failed(stage))
        assert step is not None
        if step.give_up:
            break
        step.apply(job)
        assert step.change is not None
        job.changes.append(step.change)
        job.attempts += 1
        rungs.append(step.change.rung)
    return rungs


CUDA_WEIGHT_RUNGS = ["layerwise_fp8", "model_offload", "group_offload", "sequential_offload"]


@pytest.mark.parametrize(
    ("device", "allow", "stage", "expected"),
    [
        (
            "cpu",
            True,
            Stage.DENOISE,
            ["layerwise_fp8", "fewer_frames", "lower_resolution", "fewer_steps"],
        ),
        ("cpu", True, Stage.DECODE, ["vae_tiling", "layerwise_fp8", "fewer_frames"]),
        ("cpu", False, Stage.DENOISE, ["layerwise_fp8"]),
        ("cpu", False, Stage.DECODE, ["vae_tiling", "layerwise_fp8"]),
        # On a CPU the checkpoint is read whole whatever the options: nothing to try at load.
        ("cpu", True, Stage.LOAD, []),
        ("cuda", False, Stage.DENOISE, ["free_caches", *CUDA_WEIGHT_RUNGS]),
        ("cuda", False, Stage.DECODE, ["free_caches", "vae_tiling", *CUDA_WEIGHT_RUNGS]),
        ("cuda", True, Stage.LOAD, ["free_caches", *CUDA_WEIGHT_RUNGS]),
    ],
)
def test_ladder_walk_per_device_stage_and_opt_out(
    tmp_path: Path, device: str, allow: bool, stage: Stage, expected: list[str]
) -> None:
    job = _job(device, allow)
    rungs = _walk(_recovery(tmp_path, device, max_attempts=20), job, stage)
    assert rungs[: len(expected)] == expected
    if not allow or stage is Stage.LOAD:
        assert rungs == expected  # output-changing rungs never run for an opted-out job
        assert (job.params.width, job.params.num_frames) == (1280, 81)


def test_a_rung_skipped_for_one_stage_is_tried_when_another_fails(tmp_path: Path) -> None:
    recovery, job = _recovery(tmp_path), _job()
    assert _walk_once(recovery, job, Stage.DENOISE) == "layerwise_fp8"
    assert _walk_once(recovery, job, Stage.DENOISE) == "fewer_frames"
    # Denoising fits now, the decode does not: tiling, skipped above, is next.
    assert _walk_once(recovery, job, Stage.DECODE) == "vae_tiling"
    assert _walk_once(recovery, job, Stage.DECODE) == "lower_resolution"


def test_out_of_memory_at_load_on_a_cpu_gives_up_at_once_and_says_why(tmp_path: Path) -> None:
    step = _recovery(tmp_path).plan(_job(), OOM, _failed(Stage.LOAD))
    assert step is not None
    assert step.give_up
    assert "memory ran out at model loading" in step.description
    assert "no rung lowers what loading the weights needs" in step.description


def _walk_once(recovery: MemoryRecovery, job: Job, stage: Stage) -> str:
    step = recovery.plan(job, OOM, _failed(stage))
    assert step is not None
    assert not step.give_up
    assert step.change is not None
    step.apply(job)
    job.changes.append(step.change)
    job.attempts += 1
    return str(step.change.rung)


def test_bounded_by_max_attempts(tmp_path: Path) -> None:
    job = _job()
    rungs = _walk(_recovery(tmp_path, max_attempts=2), job)
    assert rungs == ["layerwise_fp8", "fewer_frames"]
    final = _recovery(tmp_path, max_attempts=2).plan(job, OOM, _failed(Stage.DENOISE))
    assert final is not None
    assert final.give_up
    assert "2 recovery attempts" in final.description


def test_output_changes_keep_aspect_16_and_4k_plus_1(tmp_path: Path) -> None:
    job = _job()
    _walk(_recovery(tmp_path, max_attempts=20), job)
    p = job.params
    assert p.width % 16 == 0
    assert p.height % 16 == 0
    assert (p.num_frames - 1) % 4 == 0
    assert abs(p.width / p.height - 1280 / 720) < 0.1


def test_decode_oom_keeps_latents_only_when_the_rung_keeps_the_generation(
    tmp_path: Path,
) -> None:
    recovery = _recovery(tmp_path)
    job = _job()
    step = recovery.plan(job, OOM, _failed(Stage.DECODE, latents="/data/x.latents.safetensors"))
    assert step is not None
    assert step.change is not None
    step.apply(job)
    assert step.change.rung == "vae_tiling"
    assert step.change.decode_only is True
    assert job.decode_only_from == "/data/x.latents.safetensors"
    job.rungs_tried = ["vae_tiling", "layerwise_fp8"]
    step = recovery.plan(job, OOM, _failed(Stage.DECODE, latents="/data/x.latents.safetensors"))
    assert step is not None
    assert step.change is not None
    step.apply(job)
    assert step.change.rung == "fewer_frames"
    assert job.decode_only_from is None  # fewer frames: the old latents no longer fit


def test_other_failures_are_not_memory_recoveries(tmp_path: Path) -> None:
    other = Diagnosis("INPUT.INVALID", "input_validation", False, False, {})
    assert _recovery(tmp_path).plan(_job(), other, _failed(Stage.DENOISE)) is None
