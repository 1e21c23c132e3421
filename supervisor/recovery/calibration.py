"""Calibration: fit the activation coefficients of a model from measured peaks on this machine.

Each finished job records its unscaled estimate terms and its measured peak. For each stage
(denoise, decode) the samples whose predicted peak was at that stage give a least-squares scale
through the origin, ``s = sum(x*y) / sum(x*x)``, where x is the predicted activation (plus the
decoded video at decode) and y is the measured peak minus the resident weights and overhead.
The fitted scales multiply the seeded coefficients (`MemoryProfile.denoise_scale` and
`decode_scale`). With no samples for a stage its scale stays 1.0 (the published seed).

A damaged file is healed at open (supervisor/core/sqlite_salvage.py: moved aside, readable rows
carried, `heal_report` set); a corruption error later becomes `StoreCorrupted`, kept in `damage`.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from supervisor.core.sqlite_connection import OneConnectionStore
from supervisor.core.sqlite_salvage import SalvageSpec
from supervisor.errors.report import Stage
from supervisor.recovery.preflight import Estimate, MemoryProfile, with_scales

__all__ = ["Calibration", "CalibrationStore", "PeakSample", "fit_scales"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS memory_peaks (
    id INTEGER PRIMARY KEY,
    model TEXT NOT NULL,
    device TEXT NOT NULL,
    stage TEXT NOT NULL,
    resident_bytes INTEGER NOT NULL,
    activation_feature INTEGER NOT NULL,
    measured_peak INTEGER NOT NULL,
    recorded_at REAL NOT NULL
)
"""
_SALVAGE = SalvageSpec(
    store="memory calibration",
    items="memory measurements",
    schema=_SCHEMA,
    table="memory_peaks",
    check_row=lambda row: Stage(str(row["stage"])),  # a garbled stage is not carried
)
# Scales outside this range mean a broken measurement (or a wrong model), not a calibration.
MIN_SCALE, MAX_SCALE = 0.05, 20.0


@dataclass(frozen=True, slots=True)
class PeakSample:
    stage: Stage
    # Weights resident at that stage plus the runtime overhead (not scaled).
    resident_bytes: int
    # The unscaled activation term(s) of that stage.
    activation_feature: int
    measured_peak: int

    @classmethod
    def from_estimate(cls, estimate: Estimate, measured_peak: int) -> PeakSample:
        """From an estimate made with scales 1.0 (`with_scales(profile, 1, 1)`)."""
        if estimate.peak_stage is Stage.DENOISE:
            feature = estimate.denoise_feature
        else:
            feature = estimate.decode_feature + estimate.output
        return cls(
            estimate.peak_stage, estimate.weights + estimate.overhead, feature, measured_peak
        )


@dataclass(frozen=True, slots=True)
class Calibration:
    denoise_scale: float
    decode_scale: float
    samples: int

    def apply(self, profile: MemoryProfile) -> MemoryProfile:
        return with_scales(profile, self.denoise_scale, self.decode_scale)


def _scale(samples: list[PeakSample]) -> float:
    xy = sum(s.activation_feature * (s.measured_peak - s.resident_bytes) for s in samples)
    xx = sum(s.activation_feature**2 for s in samples)
    if xx == 0:
        return 1.0
    return min(MAX_SCALE, max(MIN_SCALE, xy / xx))


def fit_scales(samples: list[PeakSample]) -> Calibration:
    """Least-squares scale per stage; 1.0 for a stage without samples."""
    denoise = [s for s in samples if s.stage is Stage.DENOISE]
    decode = [s for s in samples if s.stage is Stage.DECODE]
    return Calibration(
        denoise_scale=_scale(denoise) if denoise else 1.0,
        decode_scale=_scale(decode) if decode else 1.0,
        samples=len(samples),
    )


class CalibrationStore(OneConnectionStore):
    """Measured peaks in SQLite, per (model, device); the newest `window` are fitted.

    One connection for the store's life (thread-safe: a lock), in WAL mode with
    synchronous=NORMAL: a sample is a record each job writes right after it succeeds, while
    the supervisor waits to start the next job (its pre-flight must see it); a crash of the
    process keeps it, a power cut may take the last few back, which only refits on fewer
    samples. (With a connection per call and the rollback journal's three fsyncs, a record took
    0.5–5 ms on this project's test machine, every job.)"""

    def __init__(self, path: Path, *, window: int = 50) -> None:
        self.window = window
        # Invariant: a fit is recomputed only by a record for its (model, device), right there
        # (records run in a worker thread after a job): pre-flight, on the event loop, asks for
        # it once per rung it considers and reads SQLite only for a pair never fitted.
        self._fits: dict[tuple[str, str], Calibration] = {}
        # The newest `window` samples of each pair read or recorded so far, newest first: a
        # record refits from memory instead of reading them back.
        self._recent: dict[tuple[str, str], deque[PeakSample]] = {}
        super().__init__(
            path, _SALVAGE, pragmas=("PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL")
        )

    def record(self, model: str, device: str, sample: PeakSample) -> None:
        pair = (model, device)
        self._fits.pop(pair, None)
        recent = self._recent.get(pair)
        if recent is None:
            recent = self._recent[pair] = deque(self.samples(model, device), maxlen=self.window)
        self._insert(model, device, sample)
        recent.appendleft(sample)
        self._fits[pair] = fit_scales(list(recent))

    def _insert(self, model: str, device: str, sample: PeakSample) -> None:
        with self._session() as db:
            db.execute(
                "INSERT INTO memory_peaks (model, device, stage, resident_bytes, "
                "activation_feature, measured_peak, recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    model,
                    device,
                    sample.stage.value,
                    sample.resident_bytes,
                    sample.activation_feature,
                    sample.measured_peak,
                    time.time(),
                ),
            )

    def samples(self, model: str, device: str) -> list[PeakSample]:
        """The newest `window` samples of the pair, newest first, read from the file."""
        with self._session() as db:
            rows = db.execute(
                "SELECT stage, resident_bytes, activation_feature, measured_peak "
                "FROM memory_peaks WHERE model = ? AND device = ? ORDER BY id DESC LIMIT ?",
                (model, device, self.window),
            ).fetchall()
        return [PeakSample(Stage(r[0]), int(r[1]), int(r[2]), int(r[3])) for r in rows]

    def calibration(self, model: str, device: str) -> Calibration:
        fit = self._fits.get((model, device))
        if fit is None:
            fit = self._fits[(model, device)] = fit_scales(self.samples(model, device))
        return fit

    def calibrated(self, profile: MemoryProfile, model: str, device: str) -> MemoryProfile:
        """`profile` with the scales fitted on this machine's measurements (seed when none)."""
        return self.calibration(model, device).apply(profile)
