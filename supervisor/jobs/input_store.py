"""Uploaded inputs, content-addressed in `<home>/inputs`: the same bytes are one input.

An input's id is ``sha256:<hex>`` of its bytes; its file is ``inputs/<hex>`` (the bytes as sent:
the worker applies the EXIF orientation and converts to RGB when it reads them) beside
``inputs/<hex>.json`` (format and upright size, answered without decoding again). Writes are
atomic (a temporary name, fsync, rename), so a file named by an id is always whole.

Invariant: only an id that matches `INPUT_ID_PATTERN` is ever turned into a path, and the path
is built from its hex digits alone: no client string reaches the file system.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from supervisor.core.params import INPUT_ID_PATTERN
from supervisor.jobs.image_checks import ImageFacts

__all__ = ["InputStore", "StoredInput"]

_ID = re.compile(INPUT_ID_PATTERN)


@dataclass(frozen=True, slots=True)
class StoredInput:
    id: str
    format: str
    width: int
    height: int
    bytes: int
    # False when the same bytes were already stored (the upload was a duplicate).
    created: bool

    def public(self) -> dict[str, object]:
        return asdict(self)


class InputStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, input_id: str) -> Path:
        if not _ID.fullmatch(input_id):
            raise ValueError(f"not an input id: {input_id[:80]!r}")
        return self.root / input_id.removeprefix("sha256:")

    def get(self, input_id: str) -> StoredInput | None:
        if not _ID.fullmatch(input_id):
            return None
        path = self.path(input_id)
        try:
            facts = json.loads(path.with_suffix(".json").read_text())
            size = path.stat().st_size
        except (OSError, ValueError):
            return None
        return StoredInput(
            id=input_id,
            format=facts["format"],
            width=facts["width"],
            height=facts["height"],
            bytes=size,
            created=False,
        )

    def put(self, data: bytes, facts: ImageFacts) -> StoredInput:
        """Store checked bytes (see image_checks.inspect_image); idempotent."""
        digest = hashlib.sha256(data).hexdigest()
        input_id = f"sha256:{digest}"
        existing = self.get(input_id)
        if existing is not None:
            return existing
        path = self.path(input_id)
        _write_atomic(path, data)
        meta = {"format": facts.format, "width": facts.width, "height": facts.height}
        _write_atomic(path.with_suffix(".json"), json.dumps(meta).encode())
        _fsync_dir(self.root)
        return StoredInput(
            id=input_id,
            format=facts.format,
            width=facts.width,
            height=facts.height,
            bytes=len(data),
            created=True,
        )

    def ids(self) -> set[str]:
        return {
            f"sha256:{p.name}" for p in self.root.iterdir() if _ID.fullmatch(f"sha256:{p.name}")
        }

    def remove_unused(self, keep: set[str], older_than: float) -> list[str]:
        """Delete every stored input that no job uses (`keep`) and that was stored before
        `older_than` (a timestamp: an upload waiting for its job is kept as long as a job
        would be); the ids removed."""
        removed = sorted(i for i in self.ids() - keep if self.path(i).stat().st_mtime < older_than)
        for input_id in removed:
            path = self.path(input_id)
            for file in (path, path.with_suffix(".json")):
                with contextlib.suppress(FileNotFoundError):
                    file.unlink()
        return removed


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.part")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
