"""ErrorReport: a failure captured as plain data.

An ErrorReport is what crosses the worker-process boundary and what the categorizer reads.
It never holds a live exception object: only names, text and numbers, so it round-trips
through JSON unchanged.
"""

from __future__ import annotations

import errno as errno_module
import time
import traceback as traceback_module

from pydantic import BaseModel, ConfigDict, Field

from supervisor.core.stages import Stage
from supervisor.errors.categories import ErrorCode

__all__ = ["ErrorReport", "Stage", "qualified_name"]

# Invariant: a traceback kept in a report is at most this many characters (its tail, where the
# raising frame is), so a report stays small enough for an event and a journal row.
MAX_TRACEBACK_CHARS = 8000
MAX_MESSAGE_CHARS = 4000


def qualified_name(cls: type) -> str:
    """`module.QualName` of a class; builtins keep their bare name (`MemoryError`)."""
    module = cls.__module__
    if module == "builtins":
        return cls.__qualname__
    return f"{module}.{cls.__qualname__}"


class ErrorReport(BaseModel):
    """A failure as data. `exc_type` is the qualified name of the raised class and `mro_names` the
    qualified names of its bases, most specific first (`object` omitted)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    exc_type: str = Field(description="Qualified name of the exception class")
    mro_names: tuple[str, ...] = Field(default=(), description="Qualified names of its classes")
    message: str = ""
    errno: int | None = None
    errno_name: str | None = None
    http_status: int | None = None
    stage: Stage = Stage.UNKNOWN
    device: str | None = None
    job_id: str | None = None
    traceback: str = ""
    # Classes of the exceptions this one was raised from or while handling (`__cause__`, else
    # `__context__`), nearest first: a wrapper can hide the failure that really happened.
    cause_types: tuple[str, ...] = ()
    # Extra facts the raising side knows (signal number, exit code, file path, model name).
    context: dict[str, str | int | float | bool | None] = Field(default_factory=dict)
    ts: float = Field(default_factory=time.time)

    @classmethod
    def from_exception(
        cls,
        exc: BaseException,
        *,
        stage: Stage = Stage.UNKNOWN,
        device: str | None = None,
        job_id: str | None = None,
        context: dict[str, str | int | float | bool | None] | None = None,
    ) -> ErrorReport:
        mro_names = tuple(
            qualified_name(k) for k in type(exc).__mro__ if k not in (object, BaseException)
        )
        err = getattr(exc, "errno", None)
        err_no = err if isinstance(err, int) else None
        status = _http_status(exc)
        tb = "".join(traceback_module.format_exception(exc))
        message = str(exc)
        own_context = getattr(exc, "report_context", None)
        merged = dict(own_context()) if callable(own_context) else {}
        merged.update(_carried(exc, message))
        merged.update(context or {})
        return cls(
            exc_type=qualified_name(type(exc)),
            mro_names=mro_names,
            message=message[:MAX_MESSAGE_CHARS],
            errno=err_no,
            errno_name=errno_module.errorcode.get(err_no) if err_no is not None else None,
            http_status=status,
            stage=stage,
            device=device,
            job_id=job_id,
            traceback=tb[-MAX_TRACEBACK_CHARS:],
            cause_types=_cause_types(exc),
            context=merged,
        )

    @classmethod
    def from_text(cls, text: str, **fields: object) -> ErrorReport:
        """A report made from error text alone (a pasted traceback's last line, a log line)."""
        exc_type, _, message = text.partition(": ")
        if not message or " " in exc_type.strip() or not exc_type.strip():
            return cls(exc_type="", message=text.strip(), **fields)
        return cls(exc_type=exc_type.strip(), message=message.strip(), **fields)

    def has_type(self, name: str) -> bool:
        """True when `name` (a qualified or bare class name) is the raised class or a base."""
        names = (self.exc_type, *self.mro_names)
        if "." in name:
            return name in names
        return any(n == name or n.endswith("." + name) for n in names)


_MAX_CAUSES = 8


def _cause_types(exc: BaseException) -> tuple[str, ...]:
    names: list[str] = []
    seen = {id(exc)}
    link = exc.__cause__ or exc.__context__
    while link is not None and id(link) not in seen and len(names) < _MAX_CAUSES:
        seen.add(id(link))
        names.append(qualified_name(type(link)))
        link = link.__cause__ or link.__context__
    return tuple(names)


def _carried(exc: BaseException, message: str) -> dict[str, str | int | float | bool | None]:
    """What one of genvisor's own exceptions already knows: its `code` (an ErrorCode), and the
    `remedy` sentence with the message it completes (`detail`)."""
    carried: dict[str, str | int | float | bool | None] = {}
    code = getattr(exc, "code", None)
    if isinstance(code, ErrorCode):
        carried["error_code"] = code.value
    remedy = getattr(exc, "remedy", None)
    if isinstance(remedy, str) and remedy:
        carried["remedy"] = remedy
        detail = message[: -len(remedy)] if message.endswith(remedy) else message
        carried["detail"] = detail.rstrip(" .")
    return carried


def _http_status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None
