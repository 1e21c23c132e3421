"""Repair: move the files verification flagged into `<home>/quarantine/<model>/<ts>/` and fetch
only those again. A local model (tiny-wan) is rebuilt instead: its build is deterministic
(same seed, same bytes), so the rebuilt folder is the one that was damaged, made whole.

Quarantine, not deletion: the bad bytes stay inspectable, and nothing is lost if the re-download
fails. Blocking: run it in a thread.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from actors.models.manifest import Manifest, manifest_from_directory, read_manifest, write_manifest
from actors.models.model_errors import ModelUnavailable
from actors.models.pull import DownloadProgress, HubAccess, pull_model
from actors.models.registry import ModelEntry, ModelSource
from actors.models.store import ModelStore
from actors.models.verify import verify_model_dir
from supervisor.errors.categories import ErrorCode

__all__ = ["RepairResult", "quarantine_files", "rebuild_local", "repair_model"]

_REBUILD_TIMEOUT_S = 600.0


@dataclass(slots=True)
class RepairResult:
    model: str
    repaired: list[str] = field(default_factory=list)
    quarantine: Path | None = None
    rebuilt: bool = False


def quarantine_files(
    store: ModelStore, entry: ModelEntry, root: Path, files: list[str]
) -> tuple[Path, list[str]]:
    """Move each file's bytes (the blob behind a cache symlink) to a new quarantine folder and
    remove its snapshot entry. Returns the folder and every file that lost its bytes, which
    includes other snapshot entries that shared a quarantined blob."""
    target = store.new_quarantine_dir(entry.name)
    moved_blobs: set[Path] = set()
    for rel in files:
        link = root / rel
        if not os.path.lexists(link):
            continue
        real = link.resolve()
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink():
            if real.exists():
                shutil.move(real, dest)
                moved_blobs.add(real)
            link.unlink()
        else:
            shutil.move(link, dest)
    affected = set(files)
    for other in root.rglob("*"):
        if other.is_symlink() and Path(os.path.realpath(other)) in moved_blobs:
            affected.add(other.relative_to(root).as_posix())
            other.unlink()
    return target, sorted(affected)


def rebuild_local(entry: ModelEntry, store: ModelStore) -> Path:
    """Rebuild a tiny build (the entry's `tiny_variant`, tiny-wan's shape when it names none)
    in a child process: the builder imports torch, this process must not."""
    out = entry.local_dir(store.home)
    variant = entry.tiny_variant or "t2v"
    done = subprocess.run(
        [sys.executable, "-m", "actors.worker.tiny_rebuild", str(out), variant],
        capture_output=True,
        text=True,
        timeout=_REBUILD_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise ModelUnavailable(
            model=entry.name,
            code=ErrorCode.MODEL_INCOMPLETE,
            reason=f"rebuilding failed: {done.stderr.strip()[-500:]}",
            remedy=(
                f"Run `genvisor models make-tiny --variant {variant} --out {out}` "
                "and read its error"
            ),
        )
    write_manifest(store.home, manifest_from_directory(entry.name, out))
    return out


def repair_model(
    entry: ModelEntry,
    store: ModelStore,
    access: HubAccess,
    on_progress: Callable[[DownloadProgress], None] = lambda _: None,
    *,
    allow_downloads: bool = True,
    force: bool = False,
) -> RepairResult:
    """Quarantine what a full (deep) verification flags, then fetch or rebuild it. With
    `force`, a local build is rebuilt even when its weights verify (a load failed anyway)."""
    manifest: Manifest | None = read_manifest(store.home, entry.name)
    root = store.model_dir(entry, manifest)
    report = verify_model_dir(root, manifest, deep=True)
    result = RepairResult(model=entry.name)
    if entry.source is ModelSource.LOCAL:
        if report.ok and not force:
            return result
        out = entry.local_dir(store.home)
        if out.exists():
            result.quarantine = store.new_quarantine_dir(entry.name)
            shutil.move(out, result.quarantine / out.name)
        rebuild_local(entry, store)
        result.rebuilt = True
        result.repaired = report.bad_files or ["."]
        return result
    if report.ok and manifest is not None:
        return result
    if not allow_downloads:
        raise ModelUnavailable(
            model=entry.name,
            code=ErrorCode.MODEL_CORRUPTED,
            reason="downloads are disabled (allow_downloads = false)",
            remedy=f"Allow downloads, then run `genvisor models repair {entry.name}`",
        )
    bad = report.bad_files
    if root is not None and root.is_dir() and bad:
        result.quarantine, bad = quarantine_files(store, entry, root, bad)
    # Without a manifest nothing says which files are right: fetch whatever is missing.
    pulled = pull_model(entry, store, access, on_progress, only=bad if manifest else None)
    result.repaired = pulled.downloaded
    return result
