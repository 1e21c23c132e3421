"""Rules keyed by exception class names (strings: the control process never imports torch).

A report carries the raised class and its MRO as qualified names, most specific first. The
categorizer walks that list and asks this table for each name; the first rule that gives a code
wins. A rule either fixes the code, computes it (HTTP status, errno, stage), or narrows the text
rules to some categories and falls back to its own code ("a SafetensorError is a model-file
problem; which one, the wording says").
"""

from __future__ import annotations

import errno as errno_module
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from supervisor.errors.categories import (
    WORKER_CRASHED_TYPE,
    WORKER_HUNG_TYPE,
    Category,
    ErrorCode,
)
from supervisor.errors.report import ErrorReport, Stage

__all__ = ["ERRNO_CODES", "TypeRule", "TypeRuleTable", "default_type_rules", "errno_of"]

# (report, lowered message) -> a code, or None to let the next rule or class decide.
Handler = Callable[[ErrorReport, str], ErrorCode | None]

_ERRNO_RE = re.compile(r"\[errno (\d+)\]")
_STATUS_RE = re.compile(r"\b([45]\d\d) (?:client|server) error")


def _errnos(*names: str) -> list[int]:
    return [getattr(errno_module, n) for n in names if hasattr(errno_module, n)]


ERRNO_CODES: dict[int, ErrorCode] = {
    **dict.fromkeys(_errnos("ENOSPC", "EDQUOT"), ErrorCode.FS_DISK_FULL),
    **dict.fromkeys(_errnos("EACCES", "EPERM"), ErrorCode.FS_PERMISSION),
    **dict.fromkeys(_errnos("EROFS"), ErrorCode.FS_READ_ONLY),
    **dict.fromkeys(_errnos("ENOENT", "ENOTDIR"), ErrorCode.FS_NOT_FOUND),
    **dict.fromkeys(_errnos("EMFILE", "ENFILE"), ErrorCode.FS_TOO_MANY_OPEN_FILES),
    **dict.fromkeys(_errnos("EIO"), ErrorCode.FS_IO_ERROR),
    **dict.fromkeys(_errnos("ENOMEM"), ErrorCode.SYSTEM_HOST_MEMORY),
    **dict.fromkeys(
        _errnos("ECONNREFUSED", "ENETUNREACH", "EHOSTUNREACH", "ENETDOWN", "ECONNRESET"),
        ErrorCode.NET_OFFLINE,
    ),
    **dict.fromkeys(_errnos("ETIMEDOUT"), ErrorCode.NET_TIMEOUT),
}


def errno_of(report: ErrorReport, lowered: str) -> int | None:
    """The report's errno, or the one its text states (`[Errno 28] ...`) when it came as text."""
    if report.errno is not None:
        return report.errno
    if "[errno " in lowered:
        found = _ERRNO_RE.search(lowered)
        if found:
            return int(found.group(1))
    return None


def http_status_of(report: ErrorReport, lowered: str) -> int | None:
    if report.http_status is not None:
        return report.http_status
    if " error" in lowered:
        found = _STATUS_RE.search(lowered)
        if found:
            return int(found.group(1))
    return None


def _by_errno(report: ErrorReport, lowered: str) -> ErrorCode | None:
    number = errno_of(report, lowered)
    return ERRNO_CODES.get(number) if number is not None else None


def _by_http_status(report: ErrorReport, lowered: str) -> ErrorCode | None:
    status = http_status_of(report, lowered)
    if status is None:
        return None
    if status == 429:
        return ErrorCode.NET_RATE_LIMITED
    if status >= 500:
        return ErrorCode.NET_SERVER_ERROR
    if status == 404:
        return ErrorCode.MODEL_NOT_FOUND
    return None


def _by_stage(report: ErrorReport, lowered: str) -> ErrorCode:
    # A validation error at the API edge is the request's fault; anywhere else it is ours
    # (settings, the registry, a worker message).
    return ErrorCode.INPUT_INVALID if report.stage is Stage.API else ErrorCode.CONFIG_INVALID


def _by_sqlite_words(report: ErrorReport, lowered: str) -> ErrorCode | None:
    # sqlite3 raises one family for everything: a damaged file, a full disk, a failing device,
    # a locked or a read-only database. Only the wording tells them apart.
    if "malformed" in lowered or "not a database" in lowered or "database corrupt" in lowered:
        return ErrorCode.STORE_CORRUPTED
    if "database or disk is full" in lowered:
        return ErrorCode.FS_DISK_FULL
    if "disk i/o error" in lowered:
        return ErrorCode.FS_IO_ERROR
    return None


def _worker_death(report: ErrorReport, lowered: str) -> ErrorCode:
    # The generator sets `oom_killed` when the kernel's OOM killer took the worker: then the
    # death is a memory fault (the categorizer turns it into VRAM on a CPU pipeline).
    if report.context.get("oom_killed") is True:
        return ErrorCode.SYSTEM_HOST_MEMORY
    return ErrorCode.WORKER_CRASHED


@dataclass(frozen=True, slots=True)
class TypeRule:
    """`handler` runs first; then, with `within`, the text rules of those categories; then
    `code` (None: this class does not decide, try the next one in the MRO)."""

    code: ErrorCode | None
    within: frozenset[Category] | None = None
    handler: Handler | None = None


class TypeRuleTable:
    __slots__ = ("_bare", "_exact")

    def __init__(self) -> None:
        self._exact: dict[str, TypeRule] = {}
        self._bare: dict[str, TypeRule] = {}

    def add(self, names: Iterable[str], rule: TypeRule, *, bare: bool = True) -> None:
        """Register `rule` under qualified names; with `bare`, also under the last name part
        (tracebacks pasted as text often carry `OutOfMemoryError:` or an old module path)."""
        for name in names:
            self._exact[name] = rule
            if bare:
                self._bare[name.rpartition(".")[2]] = rule

    def lookup(self, name: str) -> TypeRule | None:
        rule = self._exact.get(name)
        if rule is None:
            rule = self._bare.get(name.rpartition(".")[2])
        return rule


def default_type_rules() -> TypeRuleTable:
    t = TypeRuleTable()
    code = ErrorCode
    net = frozenset({Category.NETWORK})

    t.add(["torch.OutOfMemoryError", "torch.cuda.OutOfMemoryError"], TypeRule(code.VRAM_EXHAUSTED))
    t.add(
        ["torch.AcceleratorError", "torch.cuda.CudaError"],
        TypeRule(
            code.PIPELINE_CUDA_CONTEXT,
            within=frozenset(
                {Category.VRAM_MEMORY, Category.GENERATION_PIPELINE, Category.CONFIGURATION}
            ),
        ),
    )
    t.add(["MemoryError"], TypeRule(code.SYSTEM_HOST_MEMORY), bare=False)

    hub = "huggingface_hub.errors."
    t.add([hub + "GatedRepoError"], TypeRule(code.MODEL_GATED))
    t.add([hub + "RevisionNotFoundError"], TypeRule(code.MODEL_REVISION_NOT_FOUND))
    t.add(
        [hub + n for n in ("RepositoryNotFoundError", "DisabledRepoError", "EntryNotFoundError")]
        + [hub + "RemoteEntryNotFoundError"],
        TypeRule(code.MODEL_NOT_FOUND),
    )
    t.add(
        [hub + "LocalEntryNotFoundError", hub + "OfflineModeIsEnabled"], TypeRule(code.NET_OFFLINE)
    )
    t.add(
        [hub + "HfHubHTTPError", "requests.exceptions.HTTPError", "httpx.HTTPStatusError"],
        TypeRule(
            code.NET_SERVER_ERROR,
            within=frozenset({Category.NETWORK, Category.MODEL_LOADING}),
            handler=_by_http_status,
        ),
    )
    t.add(
        [
            "safetensors.SafetensorError",
            "safetensors_rust.SafetensorError",
            "safetensors._safetensors_rust.SafetensorError",
        ],
        TypeRule(code.MODEL_CORRUPTED, within=frozenset({Category.MODEL_LOADING})),
    )

    timeouts = [
        "httpx.TimeoutException", "httpx.ConnectTimeout", "httpx.ReadTimeout",
        "requests.exceptions.Timeout", "requests.exceptions.ReadTimeout",
        "requests.exceptions.ConnectTimeout", "urllib3.exceptions.ReadTimeoutError",
        "urllib3.exceptions.ConnectTimeoutError", "socket.timeout",
    ]  # fmt: skip
    t.add(timeouts, TypeRule(code.NET_TIMEOUT))
    t.add(["TimeoutError"], TypeRule(code.NET_TIMEOUT), bare=False)
    unreachable = [
        "httpx.ConnectError", "httpx.NetworkError", "requests.exceptions.ConnectionError",
        "urllib3.exceptions.MaxRetryError", "urllib3.exceptions.NewConnectionError",
        "urllib3.exceptions.NameResolutionError", "socket.gaierror",
    ]  # fmt: skip
    t.add(unreachable, TypeRule(code.NET_OFFLINE, within=net))
    t.add(["ConnectionError"], TypeRule(code.NET_OFFLINE, within=net), bare=False)
    t.add(["httpx.RemoteProtocolError"], TypeRule(code.NET_SERVER_ERROR))

    # OSError and its builtin subclasses decide by errno; without one they step aside, and the
    # text rules read the message (transformers and diffusers raise bare OSErrors with prose).
    os_family = [
        "OSError", "IOError", "EnvironmentError", "FileNotFoundError", "PermissionError",
        "IsADirectoryError", "NotADirectoryError", "FileExistsError", "BlockingIOError",
    ]  # fmt: skip
    t.add(os_family, TypeRule(None, handler=_by_errno), bare=False)
    # Every sqlite3 error class (OperationalError, IntegrityError, ...) has DatabaseError in its
    # MRO; genvisor's own StoreCorrupted is one too. Other wordings ("database is locked") fall
    # through to the text rules.
    t.add(
        ["sqlite3.DatabaseError", "supervisor.core.store_health.StoreCorrupted"],
        TypeRule(None, handler=_by_sqlite_words),
        bare=False,
    )

    t.add(
        [
            "pydantic_core._pydantic_core.ValidationError",
            "pydantic_core.ValidationError",
            "pydantic.ValidationError",
            "pydantic.error_wrappers.ValidationError",
        ],
        TypeRule(code.CONFIG_INVALID, handler=_by_stage),
        bare=False,
    )
    t.add(["supervisor.core.exceptions.ConfigError"], TypeRule(code.CONFIG_INVALID), bare=False)
    t.add(["supervisor.core.exceptions.ProtocolError"], TypeRule(code.WORKER_PROTOCOL), bare=False)
    t.add(
        [WORKER_CRASHED_TYPE, "supervisor.core.exceptions.WorkerStartFailed"],
        TypeRule(code.WORKER_CRASHED, handler=_worker_death),
    )
    t.add([WORKER_HUNG_TYPE], TypeRule(code.WORKER_HUNG))
    t.add(
        ["ModuleNotFoundError", "ImportError"], TypeRule(code.CONFIG_MISSING_DEPENDENCY), bare=False
    )
    return t
