"""How a failure of huggingface_hub is handled: retried (transient) or final, with the sentence
that tells the person what to do.

Which failure it is (its `ErrorCode`) is decided in one place, genvisor's categorizer
(supervisor/errors, type rules by exception class and HTTP status); this module only adds what a
download needs on top: whether to retry, and the reason and remedy worded for this model.
"""

from __future__ import annotations

from dataclasses import dataclass

from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

from actors.models.model_errors import DownloadFailed
from actors.models.registry import ModelEntry
from supervisor.errors.categories import ErrorCode
from supervisor.errors.categorizer import default_categorizer
from supervisor.errors.report import ErrorReport, Stage

__all__ = ["HashMismatch", "HubFailure", "classify_failure", "offline_error"]


class HashMismatch(Exception):
    """The bytes received do not hash to what the Hub's metadata promised (retried)."""


@dataclass(frozen=True, slots=True)
class HubFailure:
    transient: bool
    error: DownloadFailed


# Worth another attempt after a backoff: the network, the Hub's side, or bytes that came wrong.
_TRANSIENT = frozenset({
    ErrorCode.NET_OFFLINE, ErrorCode.NET_TIMEOUT, ErrorCode.NET_SERVER_ERROR,
    ErrorCode.NET_RATE_LIMITED, ErrorCode.NET_CONNECTION_LOST, ErrorCode.MODEL_CORRUPTED,
    ErrorCode.MODEL_INCOMPLETE,
})  # fmt: skip
# Final answers about the repository or this machine: retrying would only repeat them.
_FINAL = frozenset({
    ErrorCode.MODEL_GATED, ErrorCode.MODEL_NOT_FOUND, ErrorCode.MODEL_REVISION_NOT_FOUND,
    ErrorCode.FS_DISK_FULL,
})  # fmt: skip


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
    if isinstance(exc, OfflineModeIsEnabled):
        return HubFailure(False, offline_error(entry, "offline mode is on (HF_HUB_OFFLINE)"))
    if isinstance(exc, LocalEntryNotFoundError):
        # hf_hub_download wraps a failed metadata request in this; the cause says why.
        cause = exc.__cause__
        if cause is not None and cause is not exc:
            found = classify_failure(cause, entry, file)
            if found is not None:
                return found
    report = ErrorReport.from_exception(exc, stage=Stage.DOWNLOAD)
    code = default_categorizer().categorize(report).code
    if code not in _TRANSIENT and code not in _FINAL:
        return None
    status = report.http_status
    # Another 4xx than a timeout or a rate limit is the Hub's final word, whatever its code.
    refused = status is not None and 400 <= status < 500 and status not in (408, 429)
    final = code in _FINAL or refused
    reason, remedy = _words(code, exc, entry, file, status, final)
    return HubFailure(
        not final,
        DownloadFailed(model=entry.name, code=code, reason=reason, remedy=remedy, file=file),
    )


def _words(
    code: ErrorCode,
    exc: BaseException,
    entry: ModelEntry,
    file: str | None,
    status: int | None,
    final: bool,
) -> tuple[str, str]:
    """The reason (what happened to this model) and the remedy (what to run)."""
    repo = entry.repo_id or entry.name
    again = f"Check the network and run `genvisor models pull {entry.name}` again"
    if code is ErrorCode.MODEL_GATED:
        if status in (401, 403) and "gated" not in str(exc).lower():
            return (
                f"the Hub refused access to {repo} (HTTP {status})",
                "Set hf_token (GENVISOR_HF_TOKEN) to a token with read access to it",
            )
        return (
            f"{repo} is gated: its licence must be accepted before download",
            f"Accept the licence at https://huggingface.co/{repo}, then set hf_token "
            "(GENVISOR_HF_TOKEN) or run `hf auth login` with an account that accepted it",
        )
    if code is ErrorCode.MODEL_REVISION_NOT_FOUND:
        return (
            f"revision {entry.revision!r} does not exist in {repo}",
            f"Fix `revision` of the {entry.name!r} registry entry (a branch, tag or commit)",
        )
    if code is ErrorCode.MODEL_NOT_FOUND:
        if "Entry" in type(exc).__name__:
            return (
                f"{file or 'a file'} is not in {repo} at {entry.revision}",
                f"Pin `revision` of {entry.name!r} to a commit that has it, then pull again",
            )
        return (
            f"repository {repo} was not found (or is private)",
            f"Check `repo_id` of the {entry.name!r} registry entry; for a private repository "
            "set hf_token (GENVISOR_HF_TOKEN)",
        )
    if code is ErrorCode.FS_DISK_FULL:
        return "the disk filled up", "Free disk space and pull again"
    if code is ErrorCode.NET_RATE_LIMITED:
        return "rate limited by the Hub (HTTP 429)", again
    if code is ErrorCode.NET_SERVER_ERROR and status is not None:
        return f"the Hub answered HTTP {status}", "" if final else again
    if code in (ErrorCode.MODEL_CORRUPTED, ErrorCode.MODEL_INCOMPLETE):
        return f"the file arrived damaged or cut short ({exc})", again
    described = {
        ErrorCode.NET_OFFLINE: "the Hub could not be reached",
        ErrorCode.NET_TIMEOUT: "the Hub did not answer in time",
        ErrorCode.NET_CONNECTION_LOST: "the transfer broke",
    }.get(code, "the Hub had a problem")
    return f"{described} ({exc})", again
