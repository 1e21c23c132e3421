"""Availability of each registered model: present / missing / partial / corrupted, with sizes.

Cheap enough for `models list` and the state dump: sizes against the manifest and the
safetensors headers (a few KiB read per file), never the hashes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from actors.models.manifest import read_manifest
from actors.models.registry import ModelEntry, ModelSource
from actors.models.store import ModelStore
from actors.models.verify import VerifyReport, verify_model_dir
from supervisor.bus.events import ModelAvailability
from supervisor.errors.categories import ErrorCode

__all__ = ["AvailabilityReport", "StoreState", "check_availability", "remedy", "state_of"]


class StoreState(StrEnum):
    PRESENT = "present"
    MISSING = "missing"
    PARTIAL = "partial"
    CORRUPTED = "corrupted"

    @property
    def availability(self) -> ModelAvailability:
        return _EVENT_STATE[self]

    @property
    def error_code(self) -> ErrorCode | None:
        return _ERROR_CODE[self]


_EVENT_STATE = {
    StoreState.PRESENT: ModelAvailability.AVAILABLE,
    StoreState.MISSING: ModelAvailability.MISSING,
    StoreState.PARTIAL: ModelAvailability.PARTIAL,
    StoreState.CORRUPTED: ModelAvailability.CORRUPT,
}
_ERROR_CODE: dict[StoreState, ErrorCode | None] = {
    StoreState.PRESENT: None,
    StoreState.MISSING: ErrorCode.MODEL_NOT_FOUND,
    StoreState.PARTIAL: ErrorCode.MODEL_INCOMPLETE,
    StoreState.CORRUPTED: ErrorCode.MODEL_CORRUPTED,
}


@dataclass(frozen=True, slots=True)
class AvailabilityReport:
    name: str
    source: ModelSource
    state: StoreState
    path: Path | None
    bytes_present: int
    bytes_expected: int | None
    has_manifest: bool
    problems: list[str] = field(default_factory=list)
    bad_files: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source.value,
            "state": self.state.value,
            "path": str(self.path) if self.path else None,
            "bytes_present": self.bytes_present,
            "bytes_expected": self.bytes_expected,
            "has_manifest": self.has_manifest,
            "problems": self.problems,
        }


def state_of(report: VerifyReport) -> StoreState:
    if report.ok:
        return StoreState.PRESENT
    if report.root is None or not report.root.is_dir() or report.bytes_present == 0:
        return StoreState.MISSING
    if all(p.kind.incomplete for p in report.problems):
        return StoreState.PARTIAL
    return StoreState.CORRUPTED


def report_from_verify(entry: ModelEntry, report: VerifyReport) -> AvailabilityReport:
    return AvailabilityReport(
        name=entry.name,
        source=entry.source,
        state=state_of(report),
        path=report.root,
        bytes_present=report.bytes_present,
        bytes_expected=report.bytes_expected,
        has_manifest=report.has_manifest,
        problems=[str(p) for p in report.problems],
        bad_files=report.bad_files,
    )


def check_availability(entry: ModelEntry, store: ModelStore) -> AvailabilityReport:
    """Blocking (file reads): call it from a worker thread in the event loop's process."""
    manifest = read_manifest(store.home, entry.name)
    root = store.model_dir(entry, manifest)
    return report_from_verify(entry, verify_model_dir(root, manifest, deep=False))


def remedy(entry: ModelEntry, state: StoreState) -> str:
    """The command that makes `entry` usable, as a clause: "run `genvisor models pull X`"."""
    if entry.source is ModelSource.LOCAL:
        variant = entry.tiny_variant
        make = "make-tiny" if variant in (None, "t2v") else f"make-tiny --variant {variant}"
        verb = make if state is StoreState.MISSING else f"repair {entry.name}"
        return f"run `genvisor models {verb}`"
    verb = "pull" if state is StoreState.MISSING else "repair"
    return f"run `genvisor models {verb} {entry.name}`"
