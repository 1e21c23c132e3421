"""The manifest: what the Hub said about each file when it was downloaded.

Recorded at pull time from the Hub's metadata (size, LFS sha256, git blob id) and kept outside
the HF cache, at `<home>/manifests/<model>.json`, so that verification compares the bytes on
disk with what the Hub promised rather than with themselves. For a local model (tiny-wan) it is
recorded right after a build.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from actors.models.registry import ModelSource

__all__ = [
    "FileRecord",
    "Manifest",
    "file_sha256",
    "git_blob_oid",
    "manifest_from_directory",
    "manifest_path",
    "read_manifest",
    "write_manifest",
]

_CHUNK = 1 << 20


class FileRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    size: int = Field(ge=0)
    # LFS files have a sha256 (also their etag); plain git files have a git blob id (their etag).
    sha256: str | None = None
    git_oid: str | None = None

    @property
    def etag(self) -> str:
        value = self.sha256 or self.git_oid
        if value is None:
            raise ValueError(f"{self.path}: the manifest has no hash for this file")
        return value


class Manifest(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    source: ModelSource
    repo_id: str | None = None
    revision: str = "main"
    commit: str | None = None
    created: float = Field(default_factory=time.time)
    files: list[FileRecord]

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def record(self, path: str) -> FileRecord | None:
        return next((f for f in self.files if f.path == path), None)


def manifest_path(home: Path, model: str) -> Path:
    return home / "manifests" / f"{model}.json"


def read_manifest(home: Path, model: str) -> Manifest | None:
    """The recorded manifest, or None when there is none or it is unreadable (then verification
    falls back to structural checks and says so)."""
    try:
        return Manifest.model_validate_json(manifest_path(home, model).read_bytes())
    except (FileNotFoundError, ValidationError):
        return None


def write_manifest(home: Path, manifest: Manifest) -> Path:
    """Atomic: a crash leaves the old manifest or the new one, never half of one."""
    path = manifest_path(home, manifest.model)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(manifest.model_dump_json(indent=1))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def git_blob_oid(path: Path) -> str:
    """The git blob id of a file: sha1 over "blob <size>\\0" and the bytes (the Hub's etag for
    files that are not stored in LFS)."""
    digest = hashlib.sha1(usedforsecurity=False)
    digest.update(f"blob {path.stat().st_size}\0".encode())
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_from_directory(model: str, root: Path) -> Manifest:
    """A manifest of a local folder as it is now (sha256 of every file)."""
    files = [
        FileRecord(
            path=p.relative_to(root).as_posix(), size=p.stat().st_size, sha256=file_sha256(p)
        )
        for p in sorted(root.rglob("*"))
        if p.is_file()
    ]
    return Manifest(model=model, source=ModelSource.LOCAL, files=files)
