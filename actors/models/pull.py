"""Downloading a registered Hub model into the standard HF cache, file by file, through
`huggingface_hub.hf_hub_download` (which resumes an interrupted transfer with a Range request).

Order of a pull: offline check, the Hub's metadata for the revision (one request, pinned to a
commit so every file comes from the same one), the file filter (safetensors and small config
files; pickle weights refused unless allowed; never any code), the disk-space check against
the sizes still to fetch, then each file with bounded exponential backoff on transient errors,
its bytes hashed against the metadata, and finally the manifest. Blocking: run it in a thread.
"""

from __future__ import annotations

import functools
import os
import shutil
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub import constants as hf_constants

from actors.models.hub_failures import HashMismatch, classify_failure, offline_error
from actors.models.manifest import FileRecord, Manifest, file_sha256, git_blob_oid, write_manifest
from actors.models.model_errors import DiskSpaceRefused, PickleWeightsRefused
from actors.models.registry import ModelEntry, ModelSource
from actors.models.revision_files import revision_records
from actors.models.store import ModelStore
from actors.models.verify import is_pickle_weight
from supervisor.core.settings import Settings

__all__ = [
    "DownloadProgress",
    "HubAccess",
    "PullPlan",
    "PullResult",
    "free_bytes",
    "plan_pull",
    "pull_model",
]

T = TypeVar("T")
# What a diffusers pipeline needs: weights as safetensors, configs, tokenizer files.
ALLOWED_SUFFIXES = (".safetensors", ".json", ".txt", ".model")
_PROGRESS_INTERVAL_S = 0.2


def free_bytes(path: Path) -> int:
    """Free bytes on the file system that holds `path` (or its nearest existing parent)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


@dataclass(frozen=True, slots=True)
class HubAccess:
    endpoint: str | None = None
    token: str | None = None
    allow_pickle: bool = False
    retries: int = 4
    backoff_base: float = 1.0
    backoff_max: float = 30.0
    # Injectable so that tests can report a full disk without filling one.
    free_space: Callable[[Path], int] = free_bytes
    sleep: Callable[[float], None] = time.sleep

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> HubAccess:
        values: dict[str, Any] = {
            "endpoint": settings.hf_endpoint,
            "token": settings.hf_token.get_secret_value() if settings.hf_token else None,
            "allow_pickle": settings.allow_pickle_weights,
            "retries": settings.download_retries,
            "backoff_base": settings.download_backoff_base,
            "backoff_max": settings.download_backoff_max,
        }
        values.update(overrides)
        return cls(**values)


@dataclass(frozen=True, slots=True)
class DownloadProgress:
    model: str
    file: str
    file_bytes: int
    file_total: int | None
    bytes: int
    total: int


@dataclass(frozen=True, slots=True)
class PullPlan:
    entry: ModelEntry
    commit: str
    files: list[FileRecord]
    to_fetch: list[FileRecord]
    skipped: list[str]

    @property
    def bytes_to_fetch(self) -> int:
        return sum(f.size for f in self.to_fetch)


@dataclass(slots=True)
class PullResult:
    model: str
    path: Path
    commit: str
    downloaded: list[str] = field(default_factory=list)
    bytes_downloaded: int = 0


def _offline_requested() -> bool:
    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return flag in {"1", "ON", "YES", "TRUE"} or hf_constants.is_offline_mode()


def _with_retries(entry: ModelEntry, access: HubAccess, file: str | None, fn: Callable[[], T]) -> T:
    attempt = 0
    while True:
        try:
            return fn()
        except Exception as exc:
            failure = classify_failure(exc, entry, file)
            if failure is None:
                raise
            if not failure.transient or attempt >= access.retries:
                raise failure.error from exc
            access.sleep(min(access.backoff_max, access.backoff_base * 2**attempt))
            attempt += 1


def _select(entry: ModelEntry, records: list[FileRecord], allow_pickle: bool) -> list[FileRecord]:
    """Safetensors and config files; pickle weights only for a folder that has no safetensors,
    and only when allowed (otherwise the pull is refused, naming the files)."""
    safetensor_dirs = {os.path.dirname(r.path) for r in records if r.path.endswith(".safetensors")}
    chosen = [r for r in records if r.path.endswith(ALLOWED_SUFFIXES)]
    pickle_only = [
        r
        for r in records
        if is_pickle_weight(r.path) and os.path.dirname(r.path) not in safetensor_dirs
    ]
    if pickle_only and not allow_pickle:
        raise PickleWeightsRefused(model=entry.name, files=[r.path for r in pickle_only])
    return chosen + pickle_only


def _present(store: ModelStore, entry: ModelEntry, commit: str, record: FileRecord) -> bool:
    pointer = store.repo_folder(entry) / "snapshots" / commit / record.path
    return pointer.is_file() and pointer.stat().st_size == record.size


def plan_pull(
    entry: ModelEntry, store: ModelStore, access: HubAccess, only: Collection[str] | None = None
) -> PullPlan:
    """The Hub's view of the revision and what is still to fetch (one metadata request)."""
    if entry.source is not ModelSource.HUB or entry.repo_id is None:
        raise ValueError(f"{entry.name} is not a Hub model")
    if _offline_requested():
        raise offline_error(entry, "offline mode is on (HF_HUB_OFFLINE=1)")
    api = HfApi(endpoint=access.endpoint, token=access.token)
    repo_id = entry.repo_id
    info = _with_retries(
        entry,
        access,
        None,
        lambda: api.model_info(repo_id, revision=entry.revision, files_metadata=True),
    )
    if info.sha is None:
        raise ValueError(f"the Hub gave no commit for {repo_id}@{entry.revision}")
    records = revision_records(
        entry, api, info.sha, info.siblings, access.endpoint,
        lambda file, fn: _with_retries(entry, access, file, fn),
    )  # fmt: skip
    all_names = {r.path for r in records}
    files = _select(entry, records, access.allow_pickle)
    wanted = [f for f in files if only is None or f.path in only]
    to_fetch = [f for f in wanted if not _present(store, entry, info.sha, f)]
    skipped = sorted(all_names - {f.path for f in files})
    return PullPlan(entry=entry, commit=info.sha, files=files, to_fetch=to_fetch, skipped=skipped)


def _check_disk(plan: PullPlan, store: ModelStore, access: HubAccess) -> None:
    needed = sum(f.size for f in plan.to_fetch if not store.blob_path(plan.entry, f).is_file())
    # Headroom for the temporary file of the largest transfer and the file system's own needs.
    needed += min(1 << 30, needed // 20)
    free = access.free_space(store.cache_dir)
    if needed > free:
        raise DiskSpaceRefused(model=plan.entry.name, needed=needed, free=free,
                               where=str(store.cache_dir))  # fmt: skip


def _progress_class(report: Callable[[int, int | None, bool], None]) -> type:
    """A tqdm stand-in for huggingface_hub: it only counts bytes (negative on a restart)."""

    class _Counter:
        def __init__(self, *, total: int | None = None, initial: int = 0, **_: Any) -> None:
            self.n = initial
            self.total = total
            report(self.n, total, False)

        def __enter__(self) -> _Counter:
            return self

        def __exit__(self, *_: object) -> None:
            return None

        def update(self, n: int | None = 1) -> None:
            self.n += n or 0
            report(self.n, self.total, False)

        def close(self) -> None:
            return None

    return _Counter


def _check_hash(path: Path, record: FileRecord) -> None:
    if record.sha256 is not None:
        actual = file_sha256(path)
        if actual != record.sha256:
            raise HashMismatch(f"{record.path}: sha256 {actual[:12]}… is not the Hub's")
    elif record.git_oid is not None and git_blob_oid(path) != record.git_oid:
        raise HashMismatch(f"{record.path}: git blob id is not the Hub's")


def _fetch_one(
    plan: PullPlan, store: ModelStore, access: HubAccess, record: FileRecord, counter: type
) -> None:
    repo_id = plan.entry.repo_id
    assert repo_id is not None
    pointer = Path(
        hf_hub_download(
            repo_id,
            record.path,
            revision=plan.commit,
            cache_dir=store.cache_dir,
            endpoint=access.endpoint,
            token=access.token,
            tqdm_class=counter,
        )
    )
    try:
        _check_hash(pointer, record)
    except HashMismatch:
        # Wrong bytes must not stay in the shared cache, or the next call would return them.
        blob = pointer.resolve()
        pointer.unlink(missing_ok=True)
        blob.unlink(missing_ok=True)
        raise


def pull_model(
    entry: ModelEntry,
    store: ModelStore,
    access: HubAccess,
    on_progress: Callable[[DownloadProgress], None] = lambda _: None,
    *,
    only: Collection[str] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> PullResult:
    """Fetch what is missing (or only the files named in `only`) and record the manifest."""
    plan = plan_pull(entry, store, access, only)
    _check_disk(plan, store, access)
    total = plan.bytes_to_fetch
    done = 0
    last_emit = [0.0]
    result = PullResult(model=entry.name, path=store.repo_folder(entry) / "snapshots" /
                        plan.commit, commit=plan.commit)  # fmt: skip
    for record in plan.to_fetch:

        def report(
            n: int,
            file_total: int | None,
            final: bool,
            record: FileRecord = record,
            base: int = done,
        ) -> None:
            now = clock()
            if final or now - last_emit[0] >= _PROGRESS_INTERVAL_S:
                last_emit[0] = now
                on_progress(DownloadProgress(entry.name, record.path, max(n, 0), file_total,
                                             base + max(n, 0), total))  # fmt: skip

        counter = _progress_class(report)
        _with_retries(
            entry,
            access,
            record.path,
            functools.partial(_fetch_one, plan, store, access, record, counter),
        )
        done += record.size
        on_progress(
            DownloadProgress(entry.name, record.path, record.size, record.size, done, total)
        )
        result.downloaded.append(record.path)
        result.bytes_downloaded += record.size
    write_manifest(
        store.home,
        Manifest(
            model=entry.name,
            source=ModelSource.HUB,
            repo_id=entry.repo_id,
            revision=entry.revision,
            commit=plan.commit,
            files=plan.files,
        ),
    )
    return result
