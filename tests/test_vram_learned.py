"""Learned strategies (SQLite) and calibration of the activation coefficients."""

from __future__ import annotations

from pathlib import Path

import pytest

from supervisor.errors.report import Stage
from supervisor.recovery.calibration import CalibrationStore, PeakSample, fit_scales
from supervisor.recovery.ladder import RungId
from supervisor.recovery.learned_strategies import LearnedStrategies, StrategyKey, size_bucket
from supervisor.recovery.preflight import MemoryProfile

GiB = 1024**3


def _key(w: int = 832, h: int = 480, f: int = 17, cap: int | None = 2 * GiB) -> StrategyKey:
    return StrategyKey.for_job(
        model="tiny-wan", device="cpu", cap=cap, total=64 * GiB, width=w, height=h, frames=f
    )


def test_buckets_group_similar_sizes() -> None:
    assert size_bucket(832, 480, 17) == size_bucket(848, 480, 17)
    assert size_bucket(832, 480, 17) != size_bucket(1280, 720, 81)
    assert size_bucket(832, 480, 17) != size_bucket(832, 480, 33)
    assert _key(cap=2 * GiB).memory_mib == 2048
    assert _key(cap=None).memory_mib == 64 * 1024


def test_remember_lookup_all_clear_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "learned.sqlite3"
    store = LearnedStrategies(path)
    assert store.lookup(_key()) is None
    store.remember(_key(), RungId.VAE_TILING)
    store.remember(_key(), RungId.VAE_TILING)
    again = LearnedStrategies(path)  # a new process sees it
    found = again.lookup(_key(848, 480, 17))
    assert found is not None
    assert found.rung is RungId.VAE_TILING
    assert found.successes == 2
    assert again.lookup(_key(cap=4 * GiB)) is None
    again.remember(_key(), RungId.LAYERWISE_FP8)
    replaced = again.lookup(_key())
    assert replaced is not None
    assert (replaced.rung, replaced.successes) == (RungId.LAYERWISE_FP8, 1)
    again.remember(_key(1280, 720, 81), RungId.LOWER_RESOLUTION)
    assert [s.rung for s in again.all()] == [RungId.LAYERWISE_FP8, RungId.LOWER_RESOLUTION]
    assert again.forget(_key(1280, 720, 81))
    assert again.clear() == 1
    assert again.all() == []


def test_fit_scales_recovers_a_known_factor() -> None:
    samples = [
        PeakSample(
            Stage.DECODE, resident_bytes=100, activation_feature=x, measured_peak=100 + 3 * x
        )
        for x in (1000, 2000, 5000)
    ] + [PeakSample(Stage.DENOISE, 50, 400, 50 + 200)]
    cal = fit_scales(samples)
    assert cal.decode_scale == pytest.approx(3.0)
    assert cal.denoise_scale == pytest.approx(0.5)
    assert cal.samples == 4
    assert fit_scales([]).decode_scale == 1.0


def test_calibration_store_fits_from_sqlite(tmp_path: Path) -> None:
    store = CalibrationStore(tmp_path / "peaks.sqlite3")
    profile = MemoryProfile(denoise_bytes_per_position=10.0, decode_bytes_per_pixel=20.0)
    assert store.calibrated(profile, "tiny-wan", "cpu") == profile.model_copy(
        update={"denoise_scale": 1.0, "decode_scale": 1.0}
    )
    for x in (1000, 3000):
        store.record("tiny-wan", "cpu", PeakSample(Stage.DECODE, 10, x, 10 + 2 * x))
    store.record("other", "cpu", PeakSample(Stage.DECODE, 10, 1000, 10 + 9 * 1000))
    fitted = CalibrationStore(tmp_path / "peaks.sqlite3").calibrated(profile, "tiny-wan", "cpu")
    assert fitted.decode_scale == pytest.approx(2.0)
    assert fitted.denoise_scale == 1.0
