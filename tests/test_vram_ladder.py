"""The recovery ladder (config/recovery.toml): order, skipping, and the output-changing rungs."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.core.exceptions import ConfigError
from supervisor.core.params import GenerationParams, Offload, PipelineOptions
from supervisor.errors.report import Stage
from supervisor.recovery.ladder import (
    DeviceKind,
    RungId,
    apply_rung,
    apply_up_to,
    fewer_frames,
    load_ladder,
    lower_resolution,
    next_rung,
    oom_cause,
)

LADDER = load_ladder()


def _walk(kind: DeviceKind, allow: bool) -> list[RungId]:
    ids: list[RungId] = []
    rung = next_rung(LADDER, None, kind, allow)
    while rung is not None:
        ids.append(rung.id)
        rung = next_rung(LADDER, rung.id, kind, allow)
    return ids


def test_cuda_walks_every_rung_in_order() -> None:
    assert _walk(DeviceKind.CUDA, True) == list(RungId)


def test_cpu_skips_offload_rungs() -> None:
    # No cache to free on a CPU either: a plain retry would fail the same way.
    assert _walk(DeviceKind.CPU, True) == [
        RungId.VAE_TILING,
        RungId.LAYERWISE_FP8,
        RungId.FEWER_FRAMES,
        RungId.LOWER_RESOLUTION,
        RungId.FEWER_STEPS,
    ]


def test_output_changing_rungs_are_skipped_when_the_job_opts_out() -> None:
    walk = _walk(DeviceKind.CPU, False)
    assert walk == [RungId.VAE_TILING, RungId.LAYERWISE_FP8]
    assert not any(r.changes_output for r in LADDER if r.id in walk)


def test_rungs_that_change_nothing_are_skipped() -> None:
    options = PipelineOptions(vae_tiling=True, vae_slicing=True)
    params = GenerationParams(prompt="x", num_frames=1)
    rung = next_rung(
        LADDER, RungId.FREE_CACHES, DeviceKind.CPU, True, options=options, params=params
    )
    assert rung is not None
    assert rung.id is RungId.LAYERWISE_FP8
    rung = next_rung(LADDER, rung.id, DeviceKind.CPU, True, options=options, params=params)
    assert rung is not None
    assert rung.id is RungId.LOWER_RESOLUTION  # one frame cannot get fewer


@pytest.mark.parametrize("frames", [5, 9, 17, 33, 81, 121])
def test_fewer_frames_keeps_4k_plus_1(frames: int) -> None:
    new = fewer_frames(frames, 0.5)
    assert new is not None
    assert new < frames
    assert (new - 1) % 4 == 0
    assert fewer_frames(1, 0.5) is None


@pytest.mark.parametrize(("w", "h"), [(1280, 720), (832, 480), (480, 832), (1024, 1024), (96, 64)])
def test_lower_resolution_keeps_aspect_and_16(w: int, h: int) -> None:
    size = lower_resolution(w, h, 0.65)
    assert size is not None
    nw, nh = size
    assert nw % 16 == 0
    assert nh % 16 == 0
    assert nw * nh < w * h
    assert abs(nw / nh - w / h) / (w / h) < 0.12
    assert lower_resolution(16, 16, 0.65) is None


def test_apply_rung_words_and_data() -> None:
    rung = next(r for r in LADDER if r.id is RungId.LOWER_RESOLUTION)
    options = PipelineOptions()
    params = GenerationParams(prompt="a cat", width=1280, height=720, num_frames=17)
    cause = oom_cause(Stage.DECODE, "cuda:0")
    new_options, new_params, change = apply_rung(options, params, rung, cause=cause)
    assert new_options == options
    assert (new_params.width, new_params.height) == (832, 464)
    assert change.text == (
        "generated at 832x464 instead of 1280x720 because GPU memory ran out at VAE decode"
    )
    assert change.as_dict()["before"] == {"width": 1280, "height": 720}
    assert change.changes_output


def test_apply_rung_sets_options() -> None:
    rung = next(r for r in LADDER if r.id is RungId.MODEL_OFFLOAD)
    options, _, change = apply_rung(
        PipelineOptions(device="cuda:0"), GenerationParams(prompt="x"), rung
    )
    assert options.offload is Offload.MODEL
    assert change.after == {"offload": "model"}
    assert not change.changes_output


def test_apply_up_to_is_cumulative_and_respects_opt_out() -> None:
    params = GenerationParams(prompt="x", num_frames=17)
    options, new_params, changes = apply_up_to(
        LADDER, RungId.FEWER_FRAMES, PipelineOptions(), params, allow_output_changes=False
    )
    assert options.vae_tiling
    assert options.vae_slicing
    assert options.layerwise_fp8
    assert new_params.num_frames == 17
    assert [c.rung for c in changes] == [RungId.VAE_TILING, RungId.LAYERWISE_FP8]


@pytest.mark.parametrize(
    ("stages", "key"), [('["save"]', "rungs.vae_tiling.stages"), ('["later"]', "recovery ladder")]
)
def test_rung_stages_are_checked(tmp_path: Path, stages: str, key: str) -> None:
    path = tmp_path / "recovery.toml"
    path.write_text(
        f'[[rungs]]\nid = "vae_tiling"\ndescription = "tiles"\ndevices = ["cpu"]\n'
        f"changes_output = false\nstages = {stages}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_ladder(path)
    assert info.value.key == key
    assert "decode" in str(info.value) or "later" in str(info.value)
