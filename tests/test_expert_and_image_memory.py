"""Memory for the Wan 2.2 shapes and image jobs (issue 15, item 4): both experts' weights count,
an image job's conditioning encode is a stage of its own, the expert-offload rung applies only
to a two-expert model on a GPU, and on a CPU the planner says what it did not try."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from actors.models.registry import load_registry
from supervisor.core.params import GenerationParams, Offload, PipelineOptions
from supervisor.core.settings import CONFIG_DIR
from supervisor.errors.report import Stage
from supervisor.recovery.ladder import (
    DeviceKind,
    Rung,
    RungId,
    apply_rung,
    load_ladder,
    next_rung,
    rung_for_failure,
)
from supervisor.recovery.preflight import (
    MemoryProfile,
    Plan,
    PreflightJob,
    Refusal,
    choose_rung,
    estimate_peak,
    load_memory_profiles,
)
from supervisor.recovery.weights_header import summarize_weights

LADDER = load_ladder()
MiB = 1024**2
PROFILE = MemoryProfile(
    denoise_bytes_per_position=100.0, decode_bytes_per_pixel=200.0, output_copies=2.0
)
CUDA = PipelineOptions(device="cuda:0", two_experts=True)


def _component(root: Path, name: str, rows: int) -> None:
    (root / name).mkdir(parents=True)
    weights = {"w": np.zeros((rows, 256), np.float32)}
    save_file(weights, str(root / name / "diffusion_pytorch_model.safetensors"))


@pytest.fixture
def two_experts(tmp_path: Path) -> Path:
    """A model folder shaped like Wan 2.2 A14B: two experts (4 MiB and 2 MiB) and a VAE."""
    root = tmp_path / "a14b"
    _component(root, "transformer", 4096)
    _component(root, "transformer_2", 2048)
    _component(root, "vae", 256)
    return root


def _id(rung: Rung | None) -> RungId | None:
    return None if rung is None else rung.id


def test_every_registered_model_has_a_memory_profile() -> None:
    profiles = load_memory_profiles()
    missing = [n for n in load_registry(CONFIG_DIR).names() if n.lower() not in profiles]
    assert missing == []


def test_both_experts_count_and_expert_offload_keeps_the_larger_one(two_experts: Path) -> None:
    weights = summarize_weights(two_experts)
    params = GenerationParams(prompt="x", width=64, height=64, num_frames=5)
    both = estimate_peak(PROFILE, weights, CUDA, params)
    one = estimate_peak(PROFILE, weights, CUDA.model_copy(update={"expert_offload": True}), params)
    assert both.by_stage[Stage.DENOISE] - one.by_stage[Stage.DENOISE] == 2 * MiB
    # Model offload moves each expert by itself: the larger alone is on the device in denoise.
    offload = CUDA.model_copy(update={"offload": Offload.MODEL})
    moved = estimate_peak(PROFILE, weights, offload, params)
    denoise_act = both.by_stage[Stage.DENOISE] - (6 * MiB + 256 * 1024)  # experts + VAE
    assert moved.by_stage[Stage.DENOISE] == 4 * MiB + denoise_act


def test_an_image_job_has_an_encode_stage_that_tiling_lowers(two_experts: Path) -> None:
    weights = summarize_weights(two_experts)
    params = GenerationParams(prompt="x", width=832, height=480, num_frames=33)
    text = estimate_peak(PROFILE, weights, PipelineOptions(), params)
    image = estimate_peak(PROFILE, weights, PipelineOptions(), params, image=True)
    assert Stage.IMAGE_ENCODE not in text.by_stage
    encode = image.by_stage[Stage.IMAGE_ENCODE]
    # The conditioning video (first frame then zeros, float32) is counted whole.
    assert encode > 3 * 33 * 832 * 480 * 4
    # ... and its latents are held through denoise.
    assert image.by_stage[Stage.DENOISE] > text.by_stage[Stage.DENOISE]
    tiled = estimate_peak(PROFILE, weights, PipelineOptions(vae_tiling=True), params, image=True)
    assert tiled.by_stage[Stage.IMAGE_ENCODE] < encode
    # TI2V-5B (expand_timesteps) encodes the first frame alone: frames do not change it.
    first = PROFILE.model_copy(update={"encode_first_frame_only": True})
    short = estimate_peak(first, weights, PipelineOptions(), params, image=True)
    longer = params.model_copy(update={"num_frames": 81})
    long = estimate_peak(first, weights, PipelineOptions(), longer, image=True)
    assert short.by_stage[Stage.IMAGE_ENCODE] == long.by_stage[Stage.IMAGE_ENCODE]
    assert short.by_stage[Stage.IMAGE_ENCODE] < encode


def test_expert_offload_applies_only_to_two_experts_on_a_gpu() -> None:
    params = GenerationParams(prompt="x")
    after_fp8 = functools.partial(next_rung, LADDER, RungId.LAYERWISE_FP8, params=params)
    assert _id(after_fp8(DeviceKind.CUDA, True, options=CUDA)) is RungId.EXPERT_OFFLOAD
    one = CUDA.model_copy(update={"two_experts": False})
    assert _id(after_fp8(DeviceKind.CUDA, True, options=one)) is RungId.MODEL_OFFLOAD
    on_cpu = PipelineOptions(two_experts=True)
    cpu_rungs = {r.id for r in LADDER if DeviceKind.CPU in r.devices}
    assert RungId.EXPERT_OFFLOAD not in cpu_rungs
    assert _id(after_fp8(DeviceKind.CPU, True, options=on_cpu)) is RungId.FEWER_FRAMES
    # After a real out-of-memory at denoise on a GPU it is the next rung after fp8 ...
    rung = rung_for_failure(
        LADDER,
        {RungId.FREE_CACHES, RungId.LAYERWISE_FP8},
        Stage.DENOISE,
        DeviceKind.CUDA,
        True,
        options=CUDA,
        params=params,
    )
    assert rung is not None
    assert rung.id is RungId.EXPERT_OFFLOAD
    options, _, change = apply_rung(CUDA, params, rung, cause="GPU memory ran out at denoising")
    assert options.expert_offload
    assert change.text.startswith("kept only the active expert on the GPU")
    # ... and once the model offload moves each expert by itself it changes nothing.
    moved = options.model_copy(update={"expert_offload": False, "offload": Offload.MODEL})
    assert (
        next_rung(LADDER, RungId.LAYERWISE_FP8, DeviceKind.CUDA, True, options=moved, params=params)
        != rung
    )


def test_preflight_picks_expert_offload_where_it_is_enough(two_experts: Path) -> None:
    weights = summarize_weights(two_experts)
    fn = functools.partial(estimate_peak, PROFILE, weights)
    params = GenerationParams(prompt="x", width=64, height=64, num_frames=5)
    fp8 = CUDA.model_copy(update={"vae_tiling": True, "vae_slicing": True, "layerwise_fp8": True})
    swapped = fn(fp8.model_copy(update={"expert_offload": True}), params)
    assert swapped.needed < fn(fp8, params).needed
    plan = choose_rung(fn, swapped.needed, 0, LADDER, PreflightJob(CUDA, params))
    assert isinstance(plan, Plan)
    assert plan.rung is RungId.EXPERT_OFFLOAD
    assert plan.options.expert_offload
    assert plan.options.offload is Offload.NONE


def test_a_cpu_refusal_names_the_gpu_rungs_it_did_not_try(two_experts: Path) -> None:
    weights = summarize_weights(two_experts)
    fn = functools.partial(estimate_peak, PROFILE, weights)
    params = GenerationParams(prompt="x", width=64, height=64, num_frames=5)
    cpu = PipelineOptions(two_experts=True)
    job = PreflightJob(cpu, params, allow_output_changes=False)
    refused = choose_rung(fn, 1 * MiB, 0, LADDER, job)
    assert isinstance(refused, Refusal)
    assert refused.not_here[0] is RungId.EXPERT_OFFLOAD
    assert "GPU only, not tried here: expert_offload, model_offload" in refused.message
    one = PreflightJob(PipelineOptions(), params, allow_output_changes=False)
    plain = choose_rung(fn, 1 * MiB, 0, LADDER, one)
    assert isinstance(plain, Refusal)
    assert RungId.EXPERT_OFFLOAD not in plain.not_here


def test_the_worker_refuses_expert_offload_on_a_cpu() -> None:
    from actors.worker.pipeline_host import check_supported
    from supervisor.core.exceptions import UnsupportedOption

    with pytest.raises(UnsupportedOption, match="both experts already live in host memory"):
        check_supported(PipelineOptions(two_experts=True, expert_offload=True))


def test_a_refusal_says_the_largest_size_and_the_most_frames_that_fit(two_experts: Path) -> None:
    weights = summarize_weights(two_experts)
    fn = functools.partial(estimate_peak, PROFILE, weights)
    params = GenerationParams(prompt="x", width=832, height=480, num_frames=81)
    cpu = PipelineOptions()
    tiled = cpu.model_copy(update={"vae_tiling": True, "vae_slicing": True, "layerwise_fp8": True})
    budget = fn(tiled, params.model_copy(update={"width": 416, "height": 240})).needed
    refused = choose_rung(fn, budget, 0, LADDER, PreflightJob(cpu, params, False))
    assert isinstance(refused, Refusal)
    assert refused.fits_size is not None
    width, height = refused.fits_size
    assert width % 32 == 0
    assert height % 32 == 0
    at = params.model_copy(update={"width": width, "height": height})
    assert fn(tiled, at).needed <= budget
    # The next size up (same aspect, on the 32 grid the asked 832x480 is on) would not fit.
    up = width + 32
    larger = params.model_copy(update={"width": up, "height": round(up * 480 / 832 / 32) * 32})
    assert fn(tiled, larger).needed > budget
    assert refused.fits_frames is not None
    assert (refused.fits_frames - 1) % 4 == 0
    assert fn(tiled, params.model_copy(update={"num_frames": refused.fits_frames})).needed <= budget
    more = params.model_copy(update={"num_frames": refused.fits_frames + 4})
    assert fn(tiled, more).needed > budget
    assert f"it would fit at {width}x{height} or with {refused.fits_frames} frames" in (
        refused.message
    )


def test_the_refusal_words_name_what_fits() -> None:
    from supervisor.errors import ErrorCode, ErrorReport, default_categorizer, explain

    report = ErrorReport(
        exc_type="supervisor.recovery.memory.PreflightRefused",
        message="not enough memory: needs ~13.8 GiB even at the last rung (layerwise_fp8), "
        "peaking at decode; 1.1 GiB free minus a 256.0 MiB reserve leaves 896.1 MiB; it would "
        "fit at 320x320 or with 17 frames",
        stage=Stage.LOAD,
        device="cpu",
        job_id="j1",
    )
    verdict = (
        default_categorizer()
        .categorize(report)
        .__class__.of(ErrorCode.VRAM_EXHAUSTED, rule="preflight")
    )
    words = " ".join(explain(report, verdict, facts={"width": 1280, "height": 1280}).suggestions)
    assert "Lower the resolution to 320x320 (now 1280x1280): pre-flight predicts" in words
    assert "Generate 17 frames or fewer" in words
