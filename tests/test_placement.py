"""Placement by fit (supervisor/supervision/placement.py): a pure function, no process."""

from __future__ import annotations

from supervisor.core.params import GenerationParams, PipelineOptions
from supervisor.errors.report import Stage
from supervisor.recovery.ladder import AppliedChange, RungId
from supervisor.recovery.preflight import Estimate, Plan, Refusal
from supervisor.supervision.placement import DeviceView, describe_fit, place

MiB = 1024**2
MODEL = "tiny-wan"


def _estimate(needed: int) -> Estimate:
    return Estimate(
        peak=needed,
        peak_stage=Stage.DECODE,
        weights=0,
        activation=needed,
        output=0,
        overhead=0,
        by_stage={Stage.DECODE: needed},
        denoise_feature=0,
        decode_feature=0,
    )


def _change(rung: RungId, *, changes_output: bool = False) -> AppliedChange:
    return AppliedChange(rung, rung.value, changes_output, before={}, after={})


def plan(*rungs: RungId, output: bool = False) -> Plan:
    changes = [_change(r, changes_output=output) for r in rungs]
    return Plan(
        rungs[-1] if rungs else None,
        PipelineOptions(),
        GenerationParams(prompt="a harbour"),
        _estimate(100 * MiB),
        1024 * MiB,
        changes,
    )


def refusal(needed_mib: int, free_mib: int) -> Refusal:
    return Refusal(needed_mib * MiB, free_mib * MiB, 0, None, _estimate(needed_mib * MiB), (None,))


def test_fewest_changes_wins_over_a_shorter_queue() -> None:
    devices = [
        DeviceView("cpu:0", plan(RungId.VAE_TILING), queue=0),
        DeviceView("cpu:1", plan(), queue=3),
    ]
    placed = place(MODEL, devices)
    assert placed is not None
    assert placed.device == "cpu:1"
    assert placed.fits
    assert placed.reason == "placed on cpu:1: fits without changes; cpu:0 would need tiling"


def test_a_change_of_the_output_counts_before_any_number_of_others() -> None:
    devices = [
        DeviceView("cuda:0", plan(RungId.FEWER_FRAMES, output=True)),
        DeviceView("cuda:1", plan(RungId.VAE_TILING, RungId.LAYERWISE_FP8, RungId.MODEL_OFFLOAD)),
    ]
    placed = place(MODEL, devices)
    assert placed is not None
    assert placed.device == "cuda:1"
    assert "would need tiling and fp8 storage and model offload" in placed.reason


def test_an_idle_device_with_the_model_loaded_wins_a_tie() -> None:
    devices = [
        DeviceView("cpu:0", plan(), queue=0),
        DeviceView("cpu:1", plan(), queue=0, loaded_model=MODEL),
    ]
    placed = place(MODEL, devices)
    assert placed is not None
    assert placed.device == "cpu:1"
    assert "tiny-wan already loaded and idle" in placed.reason
    assert "cpu:0 fits without changes but 0 queued, tiny-wan not loaded" in placed.reason


def test_a_busy_device_with_the_model_loaded_is_not_warm() -> None:
    devices = [
        DeviceView("cpu:0", plan(), queue=1, busy=True, loaded_model=MODEL),
        DeviceView("cpu:1", plan(), queue=0, loaded_model="other"),
    ]
    placed = place(MODEL, devices)
    assert placed is not None
    assert placed.device == "cpu:1"
    assert "shortest queue (0)" in placed.reason


def _placed_on(*devices: DeviceView) -> str:
    placed = place(MODEL, devices)
    assert placed is not None
    return placed.device


def test_shortest_queue_then_setting_order() -> None:
    assert _placed_on(DeviceView("a", queue=2), DeviceView("b", queue=1)) == "b"
    assert _placed_on(DeviceView("a"), DeviceView("b")) == "a"


def test_a_known_fit_before_an_unknown_one() -> None:
    placed = place(MODEL, [DeviceView("cpu:0", None), DeviceView("cpu:1", plan())])
    assert placed is not None
    assert placed.device == "cpu:1"
    assert "cpu:0 no estimate yet (runs as asked)" in placed.reason


def test_a_device_out_of_service_is_never_chosen() -> None:
    devices = [
        DeviceView("cpu:0", plan(), in_service=False),
        DeviceView("cpu:1", plan(RungId.VAE_TILING)),
    ]
    placed = place(MODEL, devices)
    assert placed is not None
    assert placed.device == "cpu:1"
    assert placed.reason.endswith("cpu:0 is out of service")


def test_no_device_in_service_no_placement() -> None:
    assert place(MODEL, [DeviceView("cpu:0", plan(), in_service=False)]) is None
    assert place(MODEL, []) is None


def test_a_fitting_device_beats_a_refusing_one() -> None:
    devices = [DeviceView("cpu:0", refusal(2000, 1536)), DeviceView("cpu:1", plan())]
    placed = place(MODEL, devices)
    assert placed is not None
    assert placed.device == "cpu:1"
    assert placed.fits
    assert "cpu:0 does not fit (needs ~2.0 GiB, 1.5 GiB available)" in placed.reason


def test_fits_nowhere_goes_to_the_closest_and_walks_the_ladder() -> None:
    devices = [DeviceView("cpu:0", refusal(4000, 1000)), DeviceView("cpu:1", refusal(4000, 3000))]
    placed = place(MODEL, devices)
    assert placed is not None
    assert placed.device == "cpu:1"
    assert not placed.fits
    assert "the closest to fitting: the ladder is walked there" in placed.reason


def test_one_device_is_placed_there_whatever_it_says() -> None:
    for fit in (None, plan(), plan(RungId.VAE_TILING), refusal(10, 1)):
        placed = place(MODEL, [DeviceView("cpu", fit)])
        assert placed is not None
        assert placed.device == "cpu"


def test_pure_inputs_are_not_changed() -> None:
    devices = (DeviceView("cpu:0", plan(RungId.VAE_TILING)), DeviceView("cpu:1", plan()))
    before = repr(devices)
    assert place(MODEL, devices) == place(MODEL, devices)
    assert repr(devices) == before


def test_describe_fit_words() -> None:
    assert describe_fit(None).startswith("no estimate")
    assert describe_fit(plan()) == "fits without changes"
    lower = plan(RungId.LOWER_RESOLUTION, output=True)
    assert describe_fit(lower) == "would need a lower resolution"
