"""The files a Hub revision holds, each with the size and hash its bytes are checked against.

Hub-protocol servers differ in what they answer, so each source is asked only when the one
before it said nothing: the model info's `siblings` (the Hub: names, sizes, blob ids, LFS
hashes), else the tree API (a mirror whose model info lists no files); for a file named
without a hash, the paths-info API, else the file's own headers (`ETag` / `X-Linked-Etag`,
`X-Linked-Size`) when the server has no paths-info route.

Invariant: every record returned has a sha256 or a git blob id; a file no source describes is
refused (`DownloadFailed`, NET.SERVER_ERROR, naming it), never fetched unchecked.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from huggingface_hub import HfApi, HfFileMetadata, RepoFile, hf_hub_url
from huggingface_hub.hf_api import RepoSibling

from actors.models.manifest import FileRecord
from actors.models.model_errors import DownloadFailed
from actors.models.registry import ModelEntry
from supervisor.errors.categories import ErrorCode

__all__ = ["Retrying", "revision_records"]

T = TypeVar("T")

# What a server answers for a route it does not have.
_ROUTE_MISSING = frozenset({404, 405, 501})
_HEX = frozenset("0123456789abcdef")


class Retrying(Protocol):
    """Runs one Hub request (for `file`, or None for the API) with the pull's retries."""

    def __call__(self, file: str | None, fn: Callable[[], T], /) -> T: ...


def revision_records(
    entry: ModelEntry,
    api: HfApi,
    commit: str,
    siblings: Sequence[RepoSibling] | None,
    endpoint: str | None,
    retrying: Retrying,
) -> list[FileRecord]:
    """Every file of `entry`'s repository at `commit`, described (see the module's order)."""
    repo_id = entry.repo_id
    assert repo_id is not None
    if siblings:
        records = [_record_of_sibling(s) for s in siblings]
    else:
        tree = retrying(
            None, lambda: list(api.list_repo_tree(repo_id, revision=commit, recursive=True))
        )
        records = [_record_of(f) for f in tree if isinstance(f, RepoFile)]
    if any(_bare(r) for r in records):
        records = _described(entry, api, commit, records, endpoint, retrying)
    return records


def _described(
    entry: ModelEntry,
    api: HfApi,
    commit: str,
    records: list[FileRecord],
    endpoint: str | None,
    retrying: Retrying,
) -> list[FileRecord]:
    """Records completed from the paths-info API, else from each file's headers: a file
    without its hash can be neither placed in the cache nor checked."""
    repo_id = entry.repo_id
    assert repo_id is not None
    bare = [r.path for r in records if _bare(r)]
    try:
        answer = retrying(None, lambda: api.get_paths_info(repo_id, bare, revision=commit))
    except Exception as failed:
        # Only a missing route falls back to the headers: any other failure stands.
        if _status_of(failed) not in _ROUTE_MISSING:
            raise
        answer = []
    found = {f.path: f for f in answer if isinstance(f, RepoFile)}
    completed: list[FileRecord] = []
    for record in records:
        if record.path in found:
            record = _record_of(found[record.path])
        elif _bare(record):
            url = hf_hub_url(repo_id, record.path, revision=commit, endpoint=endpoint)
            head = functools.partial(api.get_hf_file_metadata, url=url)
            record = _record_from_headers(record, retrying(record.path, head))
        completed.append(record)
    unknown = [r.path for r in completed if _bare(r)]
    if unknown:
        raise DownloadFailed(
            model=entry.name,
            code=ErrorCode.NET_SERVER_ERROR,
            reason=f"the Hub at {endpoint or 'huggingface.co'} describes no size or "
            f"hash for {', '.join(unknown[:3])}",
            remedy="Use an endpoint that serves file metadata (unset hf_endpoint / "
            "GENVISOR_HF_ENDPOINT), then pull again",
            file=unknown[0],
        )
    return completed


def _bare(record: FileRecord) -> bool:
    return record.sha256 is None and record.git_oid is None


def _status_of(failed: BaseException) -> int | None:
    """The HTTP status of a failed request, itself or as the cause of our DownloadFailed."""
    for exc in (failed, failed.__cause__):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if isinstance(status, int):
            return status
    return None


def _record_from_headers(record: FileRecord, meta: HfFileMetadata) -> FileRecord:
    """The record a file's HEAD gives: the Hub's ETag is an LFS file's sha256 (X-Linked-Etag,
    64 hex) or a small file's git blob id (40 hex); anything else describes nothing."""
    etag = (meta.etag or "").lower()
    if not set(etag) <= _HEX or len(etag) not in (40, 64):
        return record
    size = meta.size if meta.size is not None else record.size
    if len(etag) == 64:
        return FileRecord(path=record.path, size=size, sha256=etag, git_oid=None)
    return FileRecord(path=record.path, size=size, sha256=None, git_oid=etag)


def _record_of_sibling(s: RepoSibling) -> FileRecord:
    return FileRecord(
        path=s.rfilename,
        size=s.size if s.size is not None else (s.lfs.size if s.lfs else 0),
        sha256=s.lfs.sha256 if s.lfs else None,
        git_oid=None if s.lfs else s.blob_id,
    )


def _record_of(f: RepoFile) -> FileRecord:
    lfs = f.lfs
    return FileRecord(
        path=f.path,
        size=f.size,
        sha256=lfs.sha256 if lfs is not None else None,
        git_oid=None if lfs is not None else f.blob_id,
    )
