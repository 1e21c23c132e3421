"""Where a model's files live on disk.

Hub models sit in the standard Hugging Face cache (`models--org--name/{blobs,snapshots,refs}`),
so diffusers and every other tool share them; local models in their own folder. Quarantined
files go to `<home>/quarantine/<model>/<timestamp>/`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import constants as hf_constants

from actors.models.manifest import FileRecord, Manifest
from actors.models.registry import ModelEntry, ModelSource

__all__ = ["ModelStore", "default_cache_dir"]


def default_cache_dir() -> Path:
    """The HF cache huggingface_hub itself would use (HF_HUB_CACHE / HF_HOME)."""
    return Path(hf_constants.HF_HUB_CACHE)


@dataclass(frozen=True, slots=True)
class ModelStore:
    home: Path
    cache_dir: Path

    def repo_folder(self, entry: ModelEntry) -> Path:
        if entry.repo_id is None:
            raise ValueError(f"{entry.name} has no repo_id")
        return self.cache_dir / ("models--" + entry.repo_id.replace("/", "--"))

    def commit_of(self, entry: ModelEntry, manifest: Manifest | None) -> str | None:
        if manifest is not None and manifest.commit:
            return manifest.commit
        ref = self.repo_folder(entry) / "refs" / entry.revision
        try:
            return ref.read_text().strip() or None
        except FileNotFoundError:
            return None

    def model_dir(self, entry: ModelEntry, manifest: Manifest | None) -> Path | None:
        """The folder a pipeline loads from (`from_pretrained(path)`); None before any pull."""
        if entry.source is ModelSource.LOCAL:
            return entry.local_dir(self.home)
        commit = self.commit_of(entry, manifest)
        return None if commit is None else self.repo_folder(entry) / "snapshots" / commit

    def blob_path(self, entry: ModelEntry, record: FileRecord) -> Path:
        return self.repo_folder(entry) / "blobs" / record.etag

    def new_quarantine_dir(self, model: str) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%S") + f"-{time.time_ns() % 1_000_000_000:09d}"
        path = self.home / "quarantine" / model / stamp
        path.mkdir(parents=True, exist_ok=False)
        return path
