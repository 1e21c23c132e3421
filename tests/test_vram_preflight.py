"""Pre-flight: weights from real safetensors headers, estimates, first fitting rung, refusal."""

from __future__ import annotations

import functools
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from supervisor.core.exceptions import WeightsHeaderError
from supervisor.core.params import Dtype, GenerationParams, PipelineOptions
from supervisor.errors.report import Stage
from supervisor.recovery.ladder import RungId, load_ladder
from supervisor.recovery.preflight import (
    MemoryProfile,
    Plan,
    PreflightJob,
    Refusal,
    choose_rung,
    estimate_peak,
    load_memory_profiles,
)
from supervisor.recovery.weights_header import read_safetensors_header, summarize_weights

MiB = 1024**2
LADDER = load_ladder()


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    root = tmp_path / "model"
    (root / "transformer").mkdir(parents=True)
    (root / "vae").mkdir()
    save_file(
        {
            "blocks.0.attn.weight": np.zeros((256, 256), np.float32),
            "blocks.0.norm.weight": np.zeros((256,), np.float32),
        },
        str(root / "transformer" / "diffusion_pytorch_model.safetensors"),
    )
    save_file(
        {"decoder.conv.weight": np.zeros((16, 16, 3, 3, 3), np.float16)},
        str(root / "vae" / "diffusion_pytorch_model.safetensors"),
    )
    return root


def test_header_gives_dtypes_and_shapes(model_dir: Path) -> None:
    tensors = read_safetensors_header(model_dir / "vae" / "diffusion_pytorch_model.safetensors")
    assert [(t.name, t.dtype, t.shape) for t in tensors] == [
        ("decoder.conv.weight", "F16", (16, 16, 3, 3, 3))
    ]
    weights = summarize_weights(model_dir)
    transformer = weights.components["transformer"]
    assert transformer.float_params == 256 * 256 + 256
    assert transformer.matrix_params == 256 * 256
    assert transformer.stored_bytes == (256 * 256 + 256) * 4
    assert weights.components["vae"].stored_bytes == 16 * 16 * 27 * 2
    # In bfloat16, and with layerwise fp8 storage of the matrices.
    assert transformer.bytes_in(2) == (256 * 256 + 256) * 2
    assert transformer.bytes_in(2, fp8_matrices=True) == 256 * 256 + 256 * 2


def test_broken_headers_are_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(struct.pack("<Q", 10) + b"{not json}")
    with pytest.raises(WeightsHeaderError, match="not JSON"):
        read_safetensors_header(bad)
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"\x01")
    with pytest.raises(WeightsHeaderError, match="shorter"):
        read_safetensors_header(short)
    odd = tmp_path / "odd.safetensors"
    header = b'{"x": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 1]}}'
    odd.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00")
    with pytest.raises(WeightsHeaderError, match="unknown dtype"):
        read_safetensors_header(odd)


PROFILE = MemoryProfile(denoise_bytes_per_position=100.0, decode_bytes_per_pixel=200.0)


def test_estimate_terms(model_dir: Path) -> None:
    weights = summarize_weights(model_dir)
    params = GenerationParams(prompt="x", width=832, height=480, num_frames=17)
    est = estimate_peak(PROFILE, weights, PipelineOptions(), params)
    assert est.peak_stage is Stage.DECODE
    assert est.decode_feature == 200 * 832 * 480 * 4
    assert est.output == 3 * 17 * 832 * 480 * 4 * 2
    assert est.peak == est.weights + est.activation + est.output + est.overhead
    tiled = estimate_peak(PROFILE, weights, PipelineOptions(vae_tiling=True), params)
    assert tiled.decode_feature == 200 * 256 * 256 * 4
    assert tiled.peak < est.peak
    half = estimate_peak(PROFILE, weights, PipelineOptions(dtype=Dtype.BFLOAT16), params)
    assert half.by_stage[Stage.DENOISE] < est.by_stage[Stage.DENOISE]


def test_seeded_profiles_load() -> None:
    profiles = load_memory_profiles()
    assert profiles["wan2.1-t2v-14b"].decode_bytes_per_pixel == 7000.0
    assert "tiny-wan" in profiles


def test_choose_rung_picks_the_first_that_fits(model_dir: Path) -> None:
    weights = summarize_weights(model_dir)
    fn = functools.partial(estimate_peak, PROFILE, weights)
    params = GenerationParams(prompt="x", width=832, height=480, num_frames=17)
    base = fn(PipelineOptions(), params)
    tiled = fn(PipelineOptions(vae_tiling=True, vae_slicing=True), params)
    reserve = 16 * MiB
    free = (base.peak + tiled.peak) // 2 + reserve
    plan = choose_rung(fn, free, reserve, LADDER, PreflightJob(PipelineOptions(), params))
    assert isinstance(plan, Plan)
    assert plan.rung is RungId.VAE_TILING
    assert plan.options.vae_tiling
    assert plan.params == params
    assert "pre-flight predicted" in plan.changes[0].text
    roomy = choose_rung(
        fn, base.peak + reserve, reserve, LADDER, PreflightJob(PipelineOptions(), params)
    )
    assert isinstance(roomy, Plan)
    assert roomy.rung is None
    assert roomy.changes == []


def test_refusal_carries_the_numbers(model_dir: Path) -> None:
    weights = summarize_weights(model_dir)
    fn = functools.partial(estimate_peak, PROFILE, weights)
    params = GenerationParams(prompt="x", width=832, height=480, num_frames=17)
    job = PreflightJob(PipelineOptions(), params, allow_output_changes=False)
    refusal = choose_rung(fn, 2 * MiB, MiB, LADDER, job)
    assert isinstance(refusal, Refusal)
    assert refusal.last_rung is RungId.LAYERWISE_FP8
    assert refusal.needed > refusal.available == MiB
    assert "needs ~" in refusal.message
    assert "1.0 MiB" in refusal.message
    # Allowed to change the output, it walks further before refusing.
    more = choose_rung(fn, 2 * MiB, MiB, LADDER, PreflightJob(PipelineOptions(), params))
    assert isinstance(more, Refusal)
    assert more.last_rung is RungId.FEWER_STEPS
    assert len(more.tried) > len(refusal.tried)
    assert more.needed < refusal.needed


def test_learned_start_is_applied_first(model_dir: Path) -> None:
    weights = summarize_weights(model_dir)
    fn = functools.partial(estimate_peak, PROFILE, weights)
    params = GenerationParams(prompt="x", width=832, height=480, num_frames=17)
    job = PreflightJob(PipelineOptions(), params, start_at=RungId.VAE_TILING)
    plan = choose_rung(fn, 10**12, 0, LADDER, job)
    assert isinstance(plan, Plan)
    assert plan.rung is RungId.VAE_TILING
    assert plan.options.vae_tiling
    assert "it worked before" in plan.changes[0].text


def test_a_cpu_load_that_can_not_fit_is_refused_at_once(tmp_path: Path) -> None:
    root = tmp_path / "heavy"
    (root / "transformer").mkdir(parents=True)
    save_file(
        {"blocks.0.ffn.weight": np.zeros((1024, 1024), np.float32)},  # 4 MiB stored
        str(root / "transformer" / "diffusion_pytorch_model.safetensors"),
    )
    weights = summarize_weights(root)
    fn = functools.partial(estimate_peak, PROFILE, weights)
    params = GenerationParams(prompt="x", width=32, height=32, num_frames=5, steps=2)
    est = fn(PipelineOptions(), params)
    # The checkpoint read whole next to the model it fills: twice the weights, in any dtype.
    assert est.load == 2 * 4 * MiB + est.overhead
    assert fn(PipelineOptions(dtype=Dtype.BFLOAT16), params).load == 6 * MiB + est.overhead
    assert est.needed_stage is Stage.LOAD
    assert est.needed == est.load > est.peak
    budget = (est.peak + est.load) // 2
    refusal = choose_rung(fn, budget, 0, LADDER, PreflightJob(PipelineOptions(), params))
    assert isinstance(refusal, Refusal)
    assert refusal.tried == (None,)  # no rung walked: none lowers a load on a CPU
    assert "as asked, peaking at load" in refusal.message
    # On CUDA the weights are read in host memory: the device sees no load term.
    assert fn(PipelineOptions(device="cuda"), params).load == 0
