"""How a failure of huggingface_hub is classified: transient (retry with backoff) or final,
with the error code and the sentence that tells the person what to do."""

from __future__ import annotations

import errno
from dataclasses import dataclass

import httpx2
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from actors.models.model_errors import DownloadFailed
from actors.models.registry import ModelEntry
from supervisor.errors.categories import ErrorCode

__all__ = ["HashMismatch", "HubFailure", "classify_failure", "offline_error"]


class HashMismatch(Exception):
    """The bytes received do not hash to what the Hub's metadata promised (retried)."""


@dataclass(frozen=True, slots=True)
class HubFailure:
    transient: bool
    error: DownloadFailed


def offline_error(entry: ModelEntry, reason: str) -> DownloadFailed:
    return DownloadFailed(
        model=entry.name,
        code=ErrorCode.NET_OFFLINE,
        reason=reason,
        remedy=f"Connect to the network (or unset HF_HUB_OFFLINE) and run "
        f"`genvisor models pull {entry.name}`; models already in the cache keep working",
    )


def classify_failure(exc: BaseException, entry: ModelEntry, file: str | None) -> HubFailure | None:
    """None for an exception that is not a download failure (a bug: let it propagate)."""
    repo = entry.repo_id or entry.name

    def final(code: ErrorCode, reason: str, remedy: str) -> HubFailure:
        return HubFailure(False, DownloadFailed(model=entry.name, code=code, reason=reason,
                                                remedy=remedy, file=file))  # fmt: skip

    def transient(code: ErrorCode, reason: str) -> HubFailure:
        remedy = f"Check the network and run `genvisor models pull {entry.name}` again"
        return HubFailure(True, DownloadFailed(model=entry.name, code=code, reason=reason,
                                               remedy=remedy, file=file))  # fmt: skip

    if isinstance(exc, OfflineModeIsEnabled):
        return HubFailure(False, offline_error(entry, "offline mode is on (HF_HUB_OFFLINE)"))
    if isinstance(exc, GatedRepoError):
        return final(
            ErrorCode.MODEL_GATED,
            f"{repo} is gated: its licence must be accepted before download",
            f"Accept the licence at https://huggingface.co/{repo}, then set hf_token "
            "(GENVISOR_HF_TOKEN) or run `hf auth login` with an account that accepted it",
        )
    if isinstance(exc, RevisionNotFoundError):
        return final(
            ErrorCode.MODEL_REVISION_NOT_FOUND,
            f"revision {entry.revision!r} does not exist in {repo}",
            f"Fix `revision` of the {entry.name!r} registry entry (a branch, tag or commit)",
        )
    if isinstance(exc, RemoteEntryNotFoundError):
        return final(
            ErrorCode.MODEL_NOT_FOUND,
            f"{file or 'a file'} is not in {repo} at {entry.revision}",
            f"Pin `revision` of {entry.name!r} to a commit that has it, then pull again",
        )
    if isinstance(exc, RepositoryNotFoundError):
        return final(
            ErrorCode.MODEL_NOT_FOUND,
            f"repository {repo} was not found (or is private)",
            f"Check `repo_id` of the {entry.name!r} registry entry; for a private repository "
            "set hf_token (GENVISOR_HF_TOKEN)",
        )
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        if status in (401, 403):
            return final(
                ErrorCode.MODEL_GATED,
                f"the Hub refused access to {repo} (HTTP {status})",
                "Set hf_token (GENVISOR_HF_TOKEN) to a token with read access to it",
            )
        if status == 429:
            return transient(ErrorCode.NET_RATE_LIMITED, "rate limited by the Hub (HTTP 429)")
        if status >= 500 or status == 408:
            return transient(ErrorCode.NET_SERVER_ERROR, f"the Hub answered HTTP {status}")
        return final(ErrorCode.NET_SERVER_ERROR, f"the Hub answered HTTP {status}", "")
    if isinstance(exc, LocalEntryNotFoundError):
        # hf_hub_download wraps a failed metadata request in this; the cause says why.
        cause = exc.__cause__
        if cause is not None and cause is not exc:
            found = classify_failure(cause, entry, file)
            if found is not None:
                return found
        return transient(ErrorCode.NET_OFFLINE, f"the Hub could not be reached ({exc})")
    if isinstance(exc, httpx2.ConnectError):
        return transient(ErrorCode.NET_OFFLINE, f"cannot connect to the Hub ({exc})")
    if isinstance(exc, httpx2.TimeoutException):
        return transient(ErrorCode.NET_TIMEOUT, f"the Hub did not answer in time ({exc})")
    if isinstance(exc, httpx2.TransportError):
        return transient(ErrorCode.NET_SERVER_ERROR, f"the transfer broke ({exc})")
    if isinstance(exc, HashMismatch):
        return transient(ErrorCode.MODEL_CORRUPTED, str(exc))
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return final(ErrorCode.FS_DISK_FULL, "the disk filled up", "Free disk space and pull again")
    if isinstance(exc, OSError) and "Consistency check failed" in str(exc):
        return transient(ErrorCode.NET_SERVER_ERROR, "the file arrived with the wrong size")
    return None
