"""The one exception hierarchy of genvisor. Every class takes its context as keyword arguments
and keeps it as attributes, so handlers read facts rather than parse messages::

    GenvisorError
    ├── ConfigError(key=, value=, allowed=)
    ├── BusClosed(last_seq=)
    ├── InvalidTransition(state=, trigger=)
    ├── ActorError(actor=)
    │   ├── ActorNotRunning(actor=)
    │   ├── MailboxFull(actor=, capacity=)
    │   ├── AskTimeout(actor=, timeout=)
    │   └── ActorCrashedError(actor=, cause=)
    ├── WorkerError(pid=)
    │   ├── WorkerStartFailed(pid=, reason=)
    │   ├── WorkerCrashed(pid=, exit_code=, job_id=, place=)
    │   ├── WorkerHung(pid=, silent_s=, job_id=)
    │   └── ProtocolError(pid=, detail=)
    ├── UnsupportedOption(option=, value=, device=, reason=)
    ├── JobCancelledError(job_id=, stage=)
    ├── ServerUnavailable(url=, reason=)
    ├── HomeInUse(home=, pid=, url=, since=)
    ├── PortInUse(host=, port=, genvisor=)
    ├── MemorySourceUnavailable(source=, reason=)
    └── WeightsHeaderError(path=, reason=)
"""

from __future__ import annotations

import time

__all__ = [
    "MemorySourceUnavailable",
    "WeightsHeaderError",
    "ActorCrashedError",
    "ActorError",
    "ActorNotRunning",
    "AskTimeout",
    "BusClosed",
    "ConfigError",
    "GenvisorError",
    "HomeInUse",
    "InvalidTransition",
    "JobCancelledError",
    "MailboxFull",
    "PortInUse",
    "ProtocolError",
    "ServerUnavailable",
    "UnsupportedOption",
    "WorkerCrashed",
    "WorkerError",
    "WorkerHung",
    "WorkerStartFailed",
    "first_leaf",
]


class GenvisorError(Exception):
    """Base of every error genvisor raises on purpose."""


class ConfigError(GenvisorError):
    def __init__(self, *, key: str, value: object, allowed: str, source: str = "") -> None:
        self.key = key
        self.value = value
        self.allowed = allowed
        self.source = source
        where = f" (from {source})" if source else ""
        super().__init__(f"setting {key!r}{where}: {value!r} is not valid: {allowed}")


class BusClosed(GenvisorError):
    def __init__(self, *, last_seq: int) -> None:
        self.last_seq = last_seq
        super().__init__(f"the event bus is closed (last seq {last_seq})")


class InvalidTransition(GenvisorError):
    def __init__(self, *, state: str, trigger: str) -> None:
        self.state = state
        self.trigger = trigger
        super().__init__(f"trigger {trigger!r} is not allowed in state {state!r}")


class ActorError(GenvisorError):
    def __init__(self, message: str, *, actor: str) -> None:
        self.actor = actor
        super().__init__(message)


class ActorNotRunning(ActorError):
    def __init__(self, *, actor: str) -> None:
        super().__init__(f"actor {actor!r} is not running", actor=actor)


class MailboxFull(ActorError):
    def __init__(self, *, actor: str, capacity: int) -> None:
        self.capacity = capacity
        super().__init__(f"mailbox of actor {actor!r} is full ({capacity} messages)", actor=actor)


class AskTimeout(ActorError):
    def __init__(self, *, actor: str, timeout: float) -> None:
        self.timeout = timeout
        super().__init__(f"actor {actor!r} did not reply within {timeout:g} s", actor=actor)


class ActorCrashedError(ActorError):
    """Raised to an `ask` pending when its actor crashed (the event is `ev.ActorCrashed`)."""

    def __init__(self, *, actor: str, cause: BaseException | None) -> None:
        self.cause = cause
        super().__init__(f"actor {actor!r} crashed: {cause!r}", actor=actor)


class WorkerError(GenvisorError):
    def __init__(self, message: str, *, pid: int | None) -> None:
        self.pid = pid
        super().__init__(message)


class WorkerStartFailed(WorkerError):
    def __init__(self, *, pid: int | None, reason: str) -> None:
        self.reason = reason
        super().__init__(f"worker process failed to start: {reason}", pid=pid)


class WorkerCrashed(WorkerError):
    """The worker process died (a signal, or an exit nobody asked for)."""

    def __init__(
        self, *, pid: int | None, exit_code: int | None, job_id: str | None, place: str = ""
    ) -> None:
        self.exit_code = exit_code
        self.job_id = job_id
        how = (
            f"killed by signal {-exit_code}"
            if exit_code is not None and exit_code < 0
            else f"exited with code {exit_code}"
        )
        during = f" while running job {job_id}" if job_id else ""
        # `place`: where a worker not of this host ran ("in Ray actor X on 10.0.0.7").
        where = f" {place}" if place else ""
        super().__init__(f"worker process {pid}{where} {how}{during}", pid=pid)

    def report_context(self) -> dict[str, str | int | float | bool | None]:
        signal = -self.exit_code if self.exit_code is not None and self.exit_code < 0 else None
        return {"pid": self.pid, "exit_code": self.exit_code, "signal": signal}


class WorkerHung(WorkerError):
    """No heartbeat from the worker within the stall timeout: it was killed."""

    def __init__(self, *, pid: int | None, silent_s: float, job_id: str | None) -> None:
        self.silent_s = silent_s
        self.job_id = job_id
        during = f" while running job {job_id}" if job_id else ""
        super().__init__(
            f"worker process {pid} sent no heartbeat for {silent_s:.1f} s{during}: killed",
            pid=pid,
        )

    def report_context(self) -> dict[str, str | int | float | bool | None]:
        return {"pid": self.pid, "silent_s": round(self.silent_s, 2)}


class ProtocolError(WorkerError):
    def __init__(self, *, pid: int | None, detail: str) -> None:
        self.detail = detail
        super().__init__(f"worker protocol error: {detail}", pid=pid)


class UnsupportedOption(GenvisorError):
    """A pipeline option this device cannot honour (e.g. CPU offload on a CPU-only worker)."""

    def __init__(self, *, option: str, value: object, device: str, reason: str) -> None:
        self.option = option
        self.value = value
        self.device = device
        self.reason = reason
        super().__init__(f"option {option}={value!r} is not supported on {device}: {reason}")


class JobCancelledError(GenvisorError):
    """A job stopped on request (cooperatively, at a step boundary or between stages); the
    event that says so is `ev.JobCancelled`."""

    def __init__(self, *, job_id: str, stage: str) -> None:
        self.job_id = job_id
        self.stage = stage
        super().__init__(f"job {job_id} cancelled during {stage}")


class ServerUnavailable(GenvisorError):
    def __init__(self, *, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"no genvisor server at {url} ({reason})")


class MemorySourceUnavailable(GenvisorError):
    """A memory source cannot be used here (no NVML library, no NVIDIA GPU, ...): a known
    situation that selects another source, never a crash."""

    def __init__(self, *, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"memory source {source} is unavailable: {reason}")


class WeightsHeaderError(GenvisorError):
    """A safetensors file whose header cannot be read (truncated, not JSON, unknown dtype)."""

    def __init__(self, *, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"cannot read the safetensors header of {path}: {reason}")


class HomeInUse(GenvisorError):
    """Another genvisor owns this data folder (its lock is held)."""

    def __init__(self, *, home: str, pid: int | None, url: str | None, since: float | None) -> None:
        self.home = home
        self.pid = pid
        self.url = url
        self.since = since
        facts = [f"pid {pid}"] if pid else []
        if url:
            facts.append(f"serving {url}")
        if since:
            facts.append(f"since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}")
        who = "another genvisor" + (f" ({', '.join(facts)})" if facts else "")
        super().__init__(
            f"{who} uses the data folder {home}; stop it first, or give this one its own "
            "folder with GENVISOR_HOME"
        )


class PortInUse(GenvisorError):
    """The port to serve on is taken, by a genvisor or by another program."""

    def __init__(self, *, host: str, port: int, genvisor: bool) -> None:
        self.host = host
        self.port = port
        self.genvisor = genvisor
        by = "a genvisor answers there" if genvisor else "by another program"
        super().__init__(
            f"port {port} on {host} is in use — {by}; choose another with --port or GENVISOR_PORT"
        )


def first_leaf(exc: BaseException) -> BaseException:
    """The first exception inside (nested) exception groups: what a task group's failure was."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
