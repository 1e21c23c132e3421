"""Rules keyed by exception class names (strings: the control process never imports torch).

A report carries the raised class and its MRO as qualified names, most specific first. The
categorizer walks that list and asks this table for each name; the first rule that gives a code
wins. A rule either fixes the code, computes it (HTTP status, errno, stage), or narrows the text
rules to some categories and falls back to its own code ("a SafetensorError is a model-file
problem; which one, the wording says").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from supervisor.errors.categories import (
    WORKER_CRASHED_TYPE,
    WORKER_HUNG_TYPE,
    Category,
    ErrorCode,
)
from supervisor.errors.os_codes import BUILTIN_OS_ERRNOS, ERRNO_CODES, errno_of, os_error_code
from supervisor.errors.report import ErrorReport, Stage

__all__ = [
    "ERRNO_CODES",
    "OWN_CODES",
    "TypeRule",
    "TypeRuleTable",
    "default_type_rules",
    "errno_of",
]

# (report, lowered message) -> a code, or None to let the next rule or class decide.
Handler = Callable[[ErrorReport, str], ErrorCode | None]

_STATUS_RE = re.compile(r"\b([45]\d\d) (?:client|server) error")
_HUB_URL = re.compile(r"huggingface\.co|hf\.co|/resolve/|/api/models/")


def http_status_of(report: ErrorReport, lowered: str) -> int | None:
    if report.http_status is not None:
        return report.http_status
    if " error" in lowered:
        found = _STATUS_RE.search(lowered)
        if found:
            return int(found.group(1))
    return None


def _by_errno(report: ErrorReport, lowered: str) -> ErrorCode | None:
    """OSError and its builtin subclasses: the number decides; without one, the class's own
    errno (`ConnectionResetError` is ECONNRESET); a program that `subprocess` could not find
    is a missing dependency (ffmpeg not installed), not a missing data file."""
    found = os_error_code(report, lowered)
    code = found[0] if found is not None else None
    if code is None:
        for name in (report.exc_type, *report.mro_names):
            implied = BUILTIN_OS_ERRNOS.get(name.rpartition(".")[2])
            if implied is not None:
                code = ERRNO_CODES.get(implied)
                break
    if code is ErrorCode.FS_NOT_FOUND and "_execute_child" in report.traceback:
        return ErrorCode.CONFIG_MISSING_DEPENDENCY
    if code is None and _NETWORK_FRAME.search(_last_frame(report.traceback)):
        # No number to go by ("[Errno 0] Error" from an SSL handshake through a proxy), but it
        # was raised while talking to a server: a connection that could not be made.
        return ErrorCode.NET_OFFLINE
    return code


def _by_io_underneath(report: ErrorReport, lowered: str) -> ErrorCode | None:
    """A library error that wraps the OS's (safetensors' `IoError(Os { code: 1224, ... })` while
    writing a file): the OS number decides; without one, the library's own rule does."""
    if "ioerror" not in lowered and "io error" not in lowered:
        return None
    found = os_error_code(report, lowered)
    return found[0] if found is not None else None


# The innermost frame of a traceback in one of the libraries that open connections.
_NETWORK_FRAME = re.compile(
    r"[/\\](?:ssl|socket)\.py|urllib3[/\\]|http[/\\]client\.py|httpcore[/\\]|httpx[/\\]"
    r"|requests[/\\]adapters\.py"
)


def _last_frame(traceback: str) -> str:
    start = traceback.rfind('File "')
    return traceback[start : start + 300] if start >= 0 else ""


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
    if status in (401, 403) and (report.has_type("HfHubHTTPError") or _HUB_URL.search(lowered)):
        # The Hub answers 401 for a gated or private repository without the right token.
        return ErrorCode.MODEL_GATED
    return None


def _by_stage(report: ErrorReport, lowered: str) -> ErrorCode:
    # A validation error at the API edge is the request's fault; in genvisor's own start-up
    # or a worker message it is ours (settings, the registry). A pasted one (no stage known)
    # is most often a host application refusing a request (a node graph's field, a UI's
    # arguments), unless it names settings.
    if report.stage is Stage.API:
        return ErrorCode.INPUT_INVALID
    if report.stage is Stage.UNKNOWN and not any(w in lowered for w in _SETTINGS_WORDS):
        return ErrorCode.INPUT_INVALID
    return ErrorCode.CONFIG_INVALID


_SETTINGS_WORDS = ("settings", "config", "environment", ".toml", ".yaml", ".env", "genvisor_")


def _by_sqlite_words(report: ErrorReport, lowered: str) -> ErrorCode | None:
    # sqlite3 raises one family for everything: a damaged file, a full disk, a failing device,
    # a locked or a read-only database. Only the wording tells them apart.
    if "malformed" in lowered or "not a database" in lowered or "database corrupt" in lowered:
        return ErrorCode.STORE_CORRUPTED
    if "database or disk is full" in lowered:
        return ErrorCode.FS_DISK_FULL
    if "disk i/o error" in lowered:
        return ErrorCode.FS_IO_ERROR
    if "readonly database" in lowered or "read-only database" in lowered:
        return ErrorCode.FS_READ_ONLY
    if "database is locked" in lowered:
        return ErrorCode.FS_IN_USE
    if "unable to open database file" in lowered:
        return ErrorCode.FS_PERMISSION
    return None


# Frames of a checkpoint being unpickled: torch.load and its legacy loader, or a caller's line.
_CHECKPOINT_LOAD = re.compile(r"torch[/\\]serialization\.py|torch\.load\(|\.(?:pth?|ckpt|bin)\b")


def _by_load_frames(report: ErrorReport, lowered: str) -> ErrorCode | None:
    # pickle says "Ran out of input" for an empty or cut-off file; when torch.load was reading
    # a checkpoint that is a truncated download. A pipe between processes (Windows DataLoader
    # workers) raises the same words, so the frames decide, not the message.
    tb = report.traceback
    if tb and "multiprocessing" not in tb and _CHECKPOINT_LOAD.search(tb):
        return ErrorCode.MODEL_INCOMPLETE
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
    t.add(["EOFError"], TypeRule(None, handler=_by_load_frames), bare=False)

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
        TypeRule(
            code.MODEL_CORRUPTED,
            within=frozenset({Category.MODEL_LOADING}),
            handler=_by_io_underneath,
        ),
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
        # A proxy that could not be reached (or a proxy setting that names nothing).
        "requests.exceptions.ProxyError", "urllib3.exceptions.ProxyError",
    ]  # fmt: skip
    t.add(unreachable, TypeRule(code.NET_OFFLINE, within=net))
    t.add(["ConnectionError"], TypeRule(code.NET_OFFLINE, within=net), bare=False)
    t.add(["httpx.RemoteProtocolError"], TypeRule(code.NET_SERVER_ERROR))
    # A connection that was up and broke mid-transfer (checked before NetworkError's OFFLINE).
    lost = [
        "httpx.ReadError", "httpx.WriteError", "httpx.CloseError",
        "requests.exceptions.ChunkedEncodingError", "http.client.RemoteDisconnected",
        "http.client.IncompleteRead",
    ]  # fmt: skip
    t.add(lost, TypeRule(code.NET_CONNECTION_LOST))
    t.add(["urllib3.exceptions.ProtocolError"], TypeRule(code.NET_CONNECTION_LOST), bare=False)

    # OSError and its builtin subclasses decide by errno; without one they step aside, and the
    # text rules read the message (transformers and diffusers raise bare OSErrors with prose).
    os_family = [
        "OSError", "IOError", "EnvironmentError", "FileNotFoundError", "PermissionError",
        "IsADirectoryError", "NotADirectoryError", "FileExistsError", "BlockingIOError",
        "ConnectionResetError", "ConnectionAbortedError", "ConnectionRefusedError",
    ]  # fmt: skip
    t.add(os_family, TypeRule(None, handler=_by_errno), bare=False)
    # Every sqlite3 error class (OperationalError, IntegrityError, ...) has DatabaseError in its
    # MRO; genvisor's own StoreCorrupted is one too. Other wordings ("database is locked") fall
    # through to the text rules.
    t.add(["sqlite3.DatabaseError"], TypeRule(None, handler=_by_sqlite_words), bare=False)
    t.add(
        ["supervisor.core.store_health.StoreCorrupted"],
        TypeRule(code.STORE_CORRUPTED, handler=_by_sqlite_words),
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
    for name, own in OWN_CODES.items():
        t.add([name], TypeRule(own), bare=False)
    return t


# genvisor's own exception classes, by qualified name. Every class genvisor raises on purpose has
# a code here or carries one (a `code` attribute that is an `ErrorCode`, which
# `ErrorReport.from_exception` copies into the report's context, decided before these rules).
# The base `GenvisorError` maps to SYSTEM.INTERNAL, so a subclass added later is never UNKNOWN;
# tests/test_errors_own_exceptions.py walks every class defined in the code base.
_CORE = "supervisor.core.exceptions."

OWN_CODES: dict[str, ErrorCode] = {
    _CORE + "GenvisorError": ErrorCode.SYSTEM_INTERNAL,
    _CORE + "BusClosed": ErrorCode.SYSTEM_STOPPING,
    _CORE + "InvalidTransition": ErrorCode.SYSTEM_INTERNAL,
    _CORE + "ActorError": ErrorCode.SYSTEM_INTERNAL,
    _CORE + "ActorNotRunning": ErrorCode.SYSTEM_STOPPING,
    _CORE + "MailboxFull": ErrorCode.SYSTEM_BUSY,
    _CORE + "AskTimeout": ErrorCode.SYSTEM_BUSY,
    _CORE + "ActorCrashedError": ErrorCode.SYSTEM_INTERNAL,
    _CORE + "WorkerError": ErrorCode.WORKER_CRASHED,
    _CORE + "UnsupportedOption": ErrorCode.CONFIG_UNSUPPORTED_OPTION,
    _CORE + "JobCancelledError": ErrorCode.PIPELINE_CANCELLED,
    _CORE + "ServerUnavailable": ErrorCode.NET_NO_SERVER,
    _CORE + "HomeInUse": ErrorCode.CONFIG_HOME_IN_USE,
    _CORE + "PortInUse": ErrorCode.CONFIG_PORT_IN_USE,
    _CORE + "MemorySourceUnavailable": ErrorCode.SYSTEM_MONITOR_UNAVAILABLE,
    _CORE + "WeightsHeaderError": ErrorCode.MODEL_CORRUPTED,
    "supervisor.supervision.job_flow.CancelRefused": ErrorCode.INPUT_CANCEL_REFUSED,
    # An uploaded image genvisor does not take (format, size, pixels): the request's fault.
    "supervisor.jobs.image_checks.ImageRejected": ErrorCode.INPUT_INVALID,
    "supervisor.api.forwarding._ClientGone": ErrorCode.NET_CONNECTION_LOST,
    # The server answered but refused the event stream: the client's token (or Origin).
    "supervisor.cli.event_stream.StreamRefused": ErrorCode.CONFIG_TOKEN_REQUIRED,
    "actors.models.hub_failures.HashMismatch": ErrorCode.MODEL_CORRUPTED,
    # These carry their own `code`; the names are the fallback for a report made without it.
    "actors.models.model_errors.ModelStoreError": ErrorCode.MODEL_LOAD_FAILED,
    "actors.models.model_errors.UnknownModel": ErrorCode.CONFIG_INVALID,
    "actors.models.model_errors.DownloadFailed": ErrorCode.NET_SERVER_ERROR,
    "actors.models.model_errors.DiskSpaceRefused": ErrorCode.FS_DISK_FULL,
    "actors.models.model_errors.PickleWeightsRefused": ErrorCode.MODEL_UNSAFE_FORMAT,
    "actors.models.model_errors.ModelUnavailable": ErrorCode.MODEL_LOAD_FAILED,
    "supervisor.api.api_errors.ApiError": ErrorCode.INPUT_INVALID,
}
