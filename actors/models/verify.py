"""Verification of a model folder: every file of the manifest present with its recorded size,
every safetensors header well-formed and covering its file exactly (this catches truncation
without reading the weights), and with `deep` the sha256 (LFS) or git blob id of every file.

The safetensors format: 8 bytes little-endian header length N, N bytes of JSON mapping tensor
names to {dtype, shape, data_offsets: [begin, end]} (offsets relative to the byte after the
header), then the data. Parsed here without torch or the safetensors package.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from actors.models.manifest import FileRecord, Manifest, file_sha256, git_blob_oid

__all__ = [
    "FileProblem",
    "ProblemKind",
    "VerifyReport",
    "check_safetensors",
    "verify_model_dir",
]

_MAX_HEADER = 100 * 1024 * 1024
_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class ProblemKind(StrEnum):
    MISSING = "missing"
    SHORT = "short"  # fewer bytes than recorded: an interrupted write or download
    OVERSIZED = "oversized"
    BAD_HEADER = "bad_header"
    COVERAGE = "coverage"  # the header's tensors do not span the data exactly
    HASH_MISMATCH = "hash_mismatch"
    NO_PIPELINE = "no_pipeline"  # no model_index.json: not a diffusers pipeline folder

    @property
    def incomplete(self) -> bool:
        """Missing bytes (MODEL.INCOMPLETE) rather than wrong bytes (MODEL.CORRUPTED)."""
        return self in (ProblemKind.MISSING, ProblemKind.SHORT, ProblemKind.NO_PIPELINE)


@dataclass(frozen=True, slots=True)
class FileProblem:
    path: str
    kind: ProblemKind
    detail: str

    def __str__(self) -> str:
        return f"{self.path}: {self.kind.value} ({self.detail})"


@dataclass(slots=True)
class VerifyReport:
    root: Path | None
    deep: bool
    problems: list[FileProblem] = field(default_factory=list)
    checked_files: int = 0
    bytes_present: int = 0
    bytes_expected: int | None = None
    has_manifest: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def bad_files(self) -> list[str]:
        return sorted({p.path for p in self.problems if p.kind is not ProblemKind.NO_PIPELINE})


def check_safetensors(path: Path) -> FileProblem | None:
    """None when the header parses and its tensors tile the data region exactly."""
    rel = path.name
    size = path.stat().st_size
    if size < 8:
        return FileProblem(rel, ProblemKind.SHORT, f"{size} bytes, no header length")
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > _MAX_HEADER or 8 + n > size:
            return FileProblem(rel, ProblemKind.SHORT, f"header of {n} bytes, file {size}")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return FileProblem(rel, ProblemKind.BAD_HEADER, f"header is not JSON: {exc}")
    if not isinstance(header, dict):
        return FileProblem(rel, ProblemKind.BAD_HEADER, "header is not an object")
    spans: list[tuple[int, int]] = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(x) for x in info["data_offsets"])
            expected = math.prod(int(d) for d in info["shape"]) * _DTYPE_BYTES[info["dtype"]]
        except (KeyError, TypeError, ValueError) as exc:
            return FileProblem(rel, ProblemKind.BAD_HEADER, f"tensor {name!r}: {exc!r}")
        if end - begin != expected:
            return FileProblem(
                rel,
                ProblemKind.BAD_HEADER,
                f"tensor {name!r} spans {end - begin}, needs {expected}",
            )
        spans.append((begin, end))
    spans.sort()
    data = size - 8 - n
    cursor = 0
    for begin, end in spans:
        if begin != cursor:
            return FileProblem(rel, ProblemKind.COVERAGE, f"gap or overlap at byte {cursor}")
        cursor = end
    if cursor != data:
        kind = ProblemKind.SHORT if cursor > data else ProblemKind.COVERAGE
        return FileProblem(rel, kind, f"tensors need {cursor} data bytes, file has {data}")
    return None


def _check_file(root: Path, record: FileRecord, deep: bool) -> FileProblem | None:
    path = root / record.path
    if not path.is_file():
        return FileProblem(record.path, ProblemKind.MISSING, "not on disk")
    size = path.stat().st_size
    if size != record.size:
        kind = ProblemKind.SHORT if size < record.size else ProblemKind.OVERSIZED
        return FileProblem(record.path, kind, f"{size} bytes, manifest says {record.size}")
    if record.path.endswith(".safetensors"):
        problem = check_safetensors(path)
        if problem is not None:
            return FileProblem(record.path, problem.kind, problem.detail)
    if deep:
        if record.sha256 is not None:
            actual = file_sha256(path)
            if actual != record.sha256:
                return FileProblem(
                    record.path, ProblemKind.HASH_MISMATCH, f"sha256 {actual[:12]}… != recorded"
                )
        elif record.git_oid is not None and git_blob_oid(path) != record.git_oid:
            return FileProblem(record.path, ProblemKind.HASH_MISMATCH, "git blob id differs")
    return None


def verify_model_dir(root: Path | None, manifest: Manifest | None, *, deep: bool) -> VerifyReport:
    """Check `root` against `manifest` (or structurally only, when there is none)."""
    report = VerifyReport(root=root, deep=deep, has_manifest=manifest is not None)
    if manifest is not None:
        report.bytes_expected = manifest.total_bytes
    if root is None or not root.is_dir():
        for record in manifest.files if manifest else []:
            report.problems.append(FileProblem(record.path, ProblemKind.MISSING, "not on disk"))
        if manifest is None:
            report.problems.append(FileProblem(".", ProblemKind.MISSING, "no model folder"))
        return report
    if manifest is not None:
        for record in manifest.files:
            problem = _check_file(root, record, deep)
            report.checked_files += 1
            path = root / record.path
            if path.is_file():
                report.bytes_present += min(path.stat().st_size, record.size)
            if problem is not None:
                report.problems.append(problem)
    else:
        for path in sorted(root.rglob("*.safetensors")):
            report.checked_files += 1
            report.bytes_present += path.stat().st_size
            problem = check_safetensors(path)
            if problem is not None:
                rel = path.relative_to(root).as_posix()
                report.problems.append(FileProblem(rel, problem.kind, problem.detail))
    if not (root / "model_index.json").is_file() and not any(
        p.path == "model_index.json" for p in report.problems
    ):
        report.problems.append(
            FileProblem("model_index.json", ProblemKind.NO_PIPELINE, "not a diffusers folder")
        )
    return report


def is_pickle_weight(path: str) -> bool:
    return path.endswith(_PICKLE_SUFFIXES)
