"""The vocabulary of the error taxonomy: categories, severities, stable codes, and results.

Codes are dotted, upper-case and spelled out here once; they never come from `hash()` or from
the wording of a message, so the same failure gets the same code on every run and machine.
Each code has exactly one category (its prefix decides it) and a default severity.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from supervisor.errors.report import ErrorReport

__all__ = [
    "CODE_SPECS",
    "WORKER_CRASHED_TYPE",
    "WORKER_HUNG_TYPE",
    "Categorization",
    "CategorizationContext",
    "Category",
    "CodeSpec",
    "ErrorCode",
    "Severity",
]

# The exception type names the generator puts in an ErrorReport when the worker process dies
# (exit, signal) or stops sending heartbeats. They are names only: no such class is imported here.
WORKER_CRASHED_TYPE = "supervisor.core.exceptions.WorkerCrashed"
WORKER_HUNG_TYPE = "supervisor.core.exceptions.WorkerHung"


class Category(StrEnum):
    INPUT_VALIDATION = "input_validation"
    MODEL_LOADING = "model_loading"
    VRAM_MEMORY = "vram_memory"
    GENERATION_PIPELINE = "generation_pipeline"
    SYSTEM_RESOURCE = "system_resource"
    CONFIGURATION = "configuration"
    FILE_SYSTEM = "file_system"
    NETWORK = "network"
    UNKNOWN = "unknown"


class Severity(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class ErrorCode(StrEnum):
    VRAM_EXHAUSTED = "VRAM.EXHAUSTED"
    VRAM_FRAGMENTED = "VRAM.FRAGMENTED"

    MODEL_CORRUPTED = "MODEL.CORRUPTED"
    MODEL_INCOMPLETE = "MODEL.INCOMPLETE"
    MODEL_NOT_FOUND = "MODEL.NOT_FOUND"
    MODEL_GATED = "MODEL.GATED"
    MODEL_REVISION_NOT_FOUND = "MODEL.REVISION_NOT_FOUND"
    MODEL_WEIGHTS_MISMATCH = "MODEL.WEIGHTS_MISMATCH"
    MODEL_UNSAFE_FORMAT = "MODEL.UNSAFE_FORMAT"
    MODEL_LOAD_FAILED = "MODEL.LOAD_FAILED"

    NET_OFFLINE = "NET.OFFLINE"
    NET_TIMEOUT = "NET.TIMEOUT"
    NET_SERVER_ERROR = "NET.SERVER_ERROR"
    NET_RATE_LIMITED = "NET.RATE_LIMITED"
    NET_CONNECTION_LOST = "NET.CONNECTION_LOST"
    NET_NO_SERVER = "NET.NO_SERVER"
    # A network failure the text does not say more of (a cue verdict: cue_scores.py).
    NET_FAILED = "NET.FAILED"

    FS_DISK_FULL = "FS.DISK_FULL"
    FS_PERMISSION = "FS.PERMISSION"
    FS_READ_ONLY = "FS.READ_ONLY"
    FS_NOT_FOUND = "FS.NOT_FOUND"
    FS_IO_ERROR = "FS.IO_ERROR"
    FS_NAME_TOO_LONG = "FS.NAME_TOO_LONG"
    FS_IN_USE = "FS.IN_USE"
    FS_PATH_CONFLICT = "FS.PATH_CONFLICT"
    FS_DAMAGED_MEDIA = "FS.DAMAGED_MEDIA"
    # A file operation failed, the text does not say how (a cue verdict).
    FS_FAILED = "FS.FAILED"

    STORE_CORRUPTED = "STORE.CORRUPTED"

    INPUT_RESOLUTION = "INPUT.RESOLUTION"
    INPUT_FRAMES = "INPUT.FRAMES"
    INPUT_PROMPT = "INPUT.PROMPT"
    INPUT_INVALID = "INPUT.INVALID"
    INPUT_CANCEL_REFUSED = "INPUT.CANCEL_REFUSED"

    PIPELINE_DEVICE_MISMATCH = "PIPELINE.DEVICE_MISMATCH"
    PIPELINE_DTYPE_MISMATCH = "PIPELINE.DTYPE_MISMATCH"
    PIPELINE_DTYPE_UNSUPPORTED = "PIPELINE.DTYPE_UNSUPPORTED"
    PIPELINE_SHAPE_MISMATCH = "PIPELINE.SHAPE_MISMATCH"
    PIPELINE_NAN_OUTPUT = "PIPELINE.NAN_OUTPUT"
    PIPELINE_CUDA_CONTEXT = "PIPELINE.CUDA_CONTEXT"
    PIPELINE_CANCELLED = "PIPELINE.CANCELLED"
    # A computation inside the pipeline failed, the text does not say how (a cue verdict).
    PIPELINE_FAILED = "PIPELINE.FAILED"

    WORKER_CRASHED = "WORKER.CRASHED"
    WORKER_HUNG = "WORKER.HUNG"
    WORKER_PROTOCOL = "WORKER.PROTOCOL"

    SYSTEM_HOST_MEMORY = "SYSTEM.HOST_MEMORY"
    SYSTEM_RESOURCE_LIMIT = "SYSTEM.RESOURCE_LIMIT"
    # A process's limit of open files (EMFILE/ENFILE, WinError 4). `FS.TOO_MANY_OPEN_FILES` until
    # 2026-11-30: five of eight people's labels of such texts said a resource limit, not a file.
    SYSTEM_TOO_MANY_OPEN_FILES = "SYSTEM.TOO_MANY_OPEN_FILES"
    SYSTEM_BUSY = "SYSTEM.BUSY"
    SYSTEM_STOPPING = "SYSTEM.STOPPING"
    SYSTEM_INTERNAL = "SYSTEM.INTERNAL"
    SYSTEM_MONITOR_UNAVAILABLE = "SYSTEM.MONITOR_UNAVAILABLE"

    CONFIG_INVALID = "CONFIG.INVALID"
    CONFIG_DEVICE_UNAVAILABLE = "CONFIG.DEVICE_UNAVAILABLE"
    CONFIG_MISSING_DEPENDENCY = "CONFIG.MISSING_DEPENDENCY"
    CONFIG_TOKEN_REQUIRED = "CONFIG.TOKEN_REQUIRED"
    CONFIG_UNSUPPORTED_HARDWARE = "CONFIG.UNSUPPORTED_HARDWARE"
    CONFIG_UNSUPPORTED_OPTION = "CONFIG.UNSUPPORTED_OPTION"
    CONFIG_INCOMPATIBLE_VERSIONS = "CONFIG.INCOMPATIBLE_VERSIONS"
    CONFIG_HOME_IN_USE = "CONFIG.HOME_IN_USE"
    CONFIG_PORT_IN_USE = "CONFIG.PORT_IN_USE"
    # The installation or set-up does not fit, the text does not say how (a guess: word_model).
    CONFIG_FAILED = "CONFIG.FAILED"

    UNKNOWN_ERROR = "UNKNOWN.ERROR"

    @property
    def category(self) -> Category:
        return _CODE_CATEGORY[self]


# Invariant: every code prefix maps to exactly one category. WORKER.* is a generation-pipeline
# fault: the process that runs the pipeline died or stalled. STORE.* is a damaged file of one of
# genvisor's own SQLite stores (jobs, journal, learned strategies, calibration): a file problem.
_PREFIX_CATEGORY: dict[str, Category] = {
    "VRAM": Category.VRAM_MEMORY,
    "MODEL": Category.MODEL_LOADING,
    "NET": Category.NETWORK,
    "FS": Category.FILE_SYSTEM,
    "STORE": Category.FILE_SYSTEM,
    "INPUT": Category.INPUT_VALIDATION,
    "PIPELINE": Category.GENERATION_PIPELINE,
    "WORKER": Category.GENERATION_PIPELINE,
    "SYSTEM": Category.SYSTEM_RESOURCE,
    "CONFIG": Category.CONFIGURATION,
    "UNKNOWN": Category.UNKNOWN,
}
_CODE_CATEGORY: dict[ErrorCode, Category] = {
    code: _PREFIX_CATEGORY[code.value.partition(".")[0]] for code in ErrorCode
}


@dataclass(frozen=True, slots=True)
class CodeSpec:
    """What a code implies by default. `recoverable` means a bounded automatic plan exists
    (retry, lower settings, repair, restart); `poisons_context` means the worker process can not
    be trusted any more and must be restarted before anything else runs in it."""

    severity: Severity
    recoverable: bool
    poisons_context: bool = False


_L, _M, _H, _C = Severity.LOW, Severity.MEDIUM, Severity.HIGH, Severity.CRITICAL

CODE_SPECS: dict[ErrorCode, CodeSpec] = {
    ErrorCode.VRAM_EXHAUSTED: CodeSpec(_H, True),
    ErrorCode.VRAM_FRAGMENTED: CodeSpec(_M, True),
    ErrorCode.MODEL_CORRUPTED: CodeSpec(_H, True),
    ErrorCode.MODEL_INCOMPLETE: CodeSpec(_H, True),
    ErrorCode.MODEL_NOT_FOUND: CodeSpec(_H, False),
    ErrorCode.MODEL_GATED: CodeSpec(_H, False),
    ErrorCode.MODEL_REVISION_NOT_FOUND: CodeSpec(_H, False),
    ErrorCode.MODEL_WEIGHTS_MISMATCH: CodeSpec(_H, False),
    ErrorCode.MODEL_UNSAFE_FORMAT: CodeSpec(_H, False),
    ErrorCode.MODEL_LOAD_FAILED: CodeSpec(_H, False),
    ErrorCode.NET_OFFLINE: CodeSpec(_M, True),
    ErrorCode.NET_TIMEOUT: CodeSpec(_M, True),
    ErrorCode.NET_SERVER_ERROR: CodeSpec(_M, True),
    ErrorCode.NET_RATE_LIMITED: CodeSpec(_M, True),
    ErrorCode.NET_CONNECTION_LOST: CodeSpec(_M, True),
    ErrorCode.NET_NO_SERVER: CodeSpec(_M, False),
    ErrorCode.NET_FAILED: CodeSpec(_M, False),
    ErrorCode.FS_DISK_FULL: CodeSpec(_C, False),
    ErrorCode.FS_PERMISSION: CodeSpec(_H, False),
    ErrorCode.FS_READ_ONLY: CodeSpec(_H, False),
    ErrorCode.FS_NOT_FOUND: CodeSpec(_M, False),
    ErrorCode.SYSTEM_TOO_MANY_OPEN_FILES: CodeSpec(_H, True, poisons_context=True),
    ErrorCode.FS_IO_ERROR: CodeSpec(_C, False),
    ErrorCode.FS_NAME_TOO_LONG: CodeSpec(_M, False),
    ErrorCode.FS_IN_USE: CodeSpec(_M, False),
    ErrorCode.FS_PATH_CONFLICT: CodeSpec(_M, False),
    ErrorCode.FS_DAMAGED_MEDIA: CodeSpec(_M, False),
    ErrorCode.FS_FAILED: CodeSpec(_M, False),
    # Not recoverable while running: the store heals at the next start (moved aside, salvaged).
    ErrorCode.STORE_CORRUPTED: CodeSpec(_H, False),
    ErrorCode.INPUT_RESOLUTION: CodeSpec(_L, False),
    ErrorCode.INPUT_FRAMES: CodeSpec(_L, False),
    ErrorCode.INPUT_PROMPT: CodeSpec(_L, False),
    ErrorCode.INPUT_INVALID: CodeSpec(_L, False),
    ErrorCode.INPUT_CANCEL_REFUSED: CodeSpec(_L, False),
    ErrorCode.PIPELINE_DEVICE_MISMATCH: CodeSpec(_H, True, poisons_context=True),
    ErrorCode.PIPELINE_DTYPE_MISMATCH: CodeSpec(_H, True),
    ErrorCode.PIPELINE_DTYPE_UNSUPPORTED: CodeSpec(_M, True),
    ErrorCode.PIPELINE_SHAPE_MISMATCH: CodeSpec(_H, False),
    ErrorCode.PIPELINE_NAN_OUTPUT: CodeSpec(_M, True),
    ErrorCode.PIPELINE_CUDA_CONTEXT: CodeSpec(_C, True, poisons_context=True),
    # A job stopped on request: nothing failed, nothing to recover.
    ErrorCode.PIPELINE_CANCELLED: CodeSpec(_L, False),
    ErrorCode.PIPELINE_FAILED: CodeSpec(_H, False),
    ErrorCode.WORKER_CRASHED: CodeSpec(_H, True, poisons_context=True),
    ErrorCode.WORKER_HUNG: CodeSpec(_H, True, poisons_context=True),
    ErrorCode.WORKER_PROTOCOL: CodeSpec(_H, True, poisons_context=True),
    ErrorCode.SYSTEM_HOST_MEMORY: CodeSpec(_H, True),
    ErrorCode.SYSTEM_RESOURCE_LIMIT: CodeSpec(_H, True),
    ErrorCode.SYSTEM_BUSY: CodeSpec(_M, True),
    ErrorCode.SYSTEM_STOPPING: CodeSpec(_M, False),
    ErrorCode.SYSTEM_INTERNAL: CodeSpec(_H, False),
    ErrorCode.SYSTEM_MONITOR_UNAVAILABLE: CodeSpec(_L, False),
    ErrorCode.CONFIG_INVALID: CodeSpec(_H, False),
    ErrorCode.CONFIG_DEVICE_UNAVAILABLE: CodeSpec(_C, True),
    ErrorCode.CONFIG_MISSING_DEPENDENCY: CodeSpec(_C, False),
    # The client lacks the server's API token: its configuration, not the server's.
    ErrorCode.CONFIG_TOKEN_REQUIRED: CodeSpec(_L, False),
    ErrorCode.CONFIG_UNSUPPORTED_HARDWARE: CodeSpec(_H, False),
    ErrorCode.CONFIG_UNSUPPORTED_OPTION: CodeSpec(_M, False),
    ErrorCode.CONFIG_INCOMPATIBLE_VERSIONS: CodeSpec(_H, False),
    ErrorCode.CONFIG_HOME_IN_USE: CodeSpec(_H, False),
    ErrorCode.CONFIG_PORT_IN_USE: CodeSpec(_H, False),
    ErrorCode.CONFIG_FAILED: CodeSpec(_H, False),
    ErrorCode.UNKNOWN_ERROR: CodeSpec(_M, False),
}


@dataclass(frozen=True, slots=True)
class Categorization:
    """The categorizer's verdict. `rule` names what decided it ("type:torch.OutOfMemoryError",
    "errno:ENOSPC", "pattern:cuda-oom", "fallback"), for debugging and for tests."""

    category: Category
    severity: Severity
    code: ErrorCode
    recoverable: bool
    rule: str
    poisons_context: bool

    @classmethod
    def of(cls, code: ErrorCode, rule: str, severity: Severity | None = None) -> Categorization:
        spec = CODE_SPECS[code]
        return cls(
            category=_CODE_CATEGORY[code],
            severity=severity or spec.severity,
            code=code,
            recoverable=spec.recoverable,
            rule=rule,
            poisons_context=spec.poisons_context,
        )

    def as_summary(self) -> dict[str, str | bool]:
        return {
            "category": self.category.value,
            "severity": self.severity.value,
            "code": self.code.value,
            "recoverable": self.recoverable,
        }


@dataclass(frozen=True, slots=True)
class CategorizationContext:
    """What the caller knows beyond the report. `pipeline_on_cpu`: the pipeline's tensors live
    in host RAM, so host-memory exhaustion is device-memory exhaustion."""

    device_kind: str | None = None
    pipeline_on_cpu: bool = False

    @classmethod
    def from_report(cls, report: ErrorReport) -> CategorizationContext:
        device = (report.device or "").strip().lower()
        kind = device.partition(":")[0] or None
        return cls(device_kind=kind, pipeline_on_cpu=kind == "cpu")
