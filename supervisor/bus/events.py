"""The typed events of genvisor and their envelope.

Every event on the bus, in the journal and on the WebSocket is the envelope
``{"seq": n, "ts": unix_seconds, "type": "job.progress", "data": {...}}``. Each ``type`` has one
pydantic model for its ``data`` (a subclass of `EventData` that names its type in the class
variable ``event_type``). Inside the process an event is the frozen dataclass `Event`; the
pydantic envelope models of `schema.py` describe the wire format (a discriminated union on
``type``) and `Event.from_json` validates it.

Invariant: ``Event.to_json()`` is computed at most once per event (it is cached), because one
event is written to the journal and sent to every WebSocket client.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, JsonValue

from supervisor.core.stages import Stage
from supervisor.core.states import State

__all__ = [
    "ActorCrashed",
    "ActorRestarted",
    "ActorStarted",
    "ActorStopped",
    "BusGap",
    "BusLagged",
    "DATA_MODELS",
    "Event",
    "EventData",
    "EventType",
    "GapReason",
    "JobCancelled",
    "JobFailed",
    "JobProgress",
    "JobQueued",
    "JobRetrying",
    "JobStarted",
    "JobSucceeded",
    "ModelAvailability",
    "ModelDownloadProgress",
    "ModelRepaired",
    "ModelStatus",
    "ModelVerified",
    "PressureLevel",
    "RecoveryAttempt",
    "RecoveryResult",
    "SupervisorStateName",
    "SupervisorTransition",
    "VramPressure",
    "VramSample",
    "VramSource",
]


class EventType(StrEnum):
    SUPERVISOR_TRANSITION = "supervisor.transition"
    ACTOR_STARTED = "actor.started"
    ACTOR_STOPPED = "actor.stopped"
    ACTOR_CRASHED = "actor.crashed"
    ACTOR_RESTARTED = "actor.restarted"
    BUS_LAGGED = "bus.lagged"
    BUS_GAP = "bus.gap"
    JOB_QUEUED = "job.queued"
    JOB_STARTED = "job.started"
    JOB_PROGRESS = "job.progress"
    JOB_RETRYING = "job.retrying"
    JOB_SUCCEEDED = "job.succeeded"
    JOB_FAILED = "job.failed"
    JOB_CANCELLED = "job.cancelled"
    MODEL_STATUS = "model.status"
    MODEL_DOWNLOAD_PROGRESS = "model.download.progress"
    MODEL_VERIFIED = "model.verified"
    MODEL_REPAIRED = "model.repaired"
    VRAM_SAMPLE = "vram.sample"
    VRAM_PRESSURE = "vram.pressure"
    RECOVERY_ATTEMPT = "recovery.attempt"
    RECOVERY_RESULT = "recovery.result"


# The states of the supervisor's machine: one enum, defined with the machine.
SupervisorStateName = State


class ModelAvailability(StrEnum):
    UNKNOWN = "unknown"
    MISSING = "missing"
    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    AVAILABLE = "available"
    PARTIAL = "partial"
    CORRUPT = "corrupt"
    REPAIRING = "repairing"
    LOADED = "loaded"
    UNAVAILABLE = "unavailable"


class GapReason(StrEnum):
    """Why numbers in a replay have no event; none of them can be fetched again. ``restart``:
    reserved by a run that died (unused, or published and not journaled yet); ``retention``:
    older than the journal keeps; ``damaged``: on a part of the file that could not be read;
    ``ahead``: beyond this bus's last number (``since`` came from a journal that was lost or
    replaced: these numbers will name new events); ``missing``: no reason recorded."""

    RESTART = "restart"
    RETENTION = "retention"
    DAMAGED = "damaged"
    AHEAD = "ahead"
    MISSING = "missing"


class VramSource(StrEnum):
    NVML = "nvml"
    TORCH = "torch"
    HOST = "host"


class PressureLevel(StrEnum):
    """Memory pressure on one device, from its used fraction (with hysteresis)."""

    NORMAL = "normal"
    WARNING = "warning"
    CRITICAL = "critical"


class EventData(BaseModel):
    """Base of every event's data. Frozen: an event, once published, never changes."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", serialize_by_alias=True, validate_by_name=True
    )
    event_type: ClassVar[EventType]


class SupervisorTransition(EventData):
    event_type = EventType.SUPERVISOR_TRANSITION
    # On the wire the keys are "from" and "to" (DESIGN.md); in Python they are keywords.
    from_state: SupervisorStateName = Field(alias="from")
    to_state: SupervisorStateName = Field(alias="to")
    trigger: str
    reason: str = ""
    error_code: str | None = None


class ActorStarted(EventData):
    event_type = EventType.ACTOR_STARTED
    actor: str
    pid: int | None = None


class ActorStopped(EventData):
    event_type = EventType.ACTOR_STOPPED
    actor: str


class ActorCrashed(EventData):
    event_type = EventType.ACTOR_CRASHED
    actor: str
    error_code: str | None = None
    message: str


class ActorRestarted(EventData):
    event_type = EventType.ACTOR_RESTARTED
    actor: str
    restarts_in_window: int = Field(ge=0)
    delay_s: float = Field(ge=0)


class BusLagged(EventData):
    """Sent to one subscriber only (never journaled): it lost ``dropped`` events, the first of
    them numbered ``resume_from``. Replay ``since=resume_from - 1`` to get them back, as long as
    the journal still holds them."""

    event_type = EventType.BUS_LAGGED
    dropped: int = Field(ge=1)
    resume_from: int = Field(ge=1)


class BusGap(EventData):
    """Sent to one subscriber only (never journaled), in a replay: the numbers ``from_seq..to_seq``
    have no event, for ``reason``; asking again will not bring them back. Its envelope seq is
    ``to_seq`` (a client keeping "the last seq seen" moves past it), except for ``ahead``: the
    bus's last number, and the client must forget every seq above it."""

    event_type = EventType.BUS_GAP
    from_seq: int = Field(ge=1)
    to_seq: int = Field(ge=1)
    reason: GapReason


class JobQueued(EventData):
    event_type = EventType.JOB_QUEUED
    job_id: str
    position: int = Field(ge=0)


class JobStarted(EventData):
    event_type = EventType.JOB_STARTED
    job_id: str
    attempt: int = Field(ge=1)
    model: str
    options: dict[str, JsonValue] = Field(default_factory=dict)
    # With a `devices` list: the device it runs on, and why it was placed there (None with one).
    device: str | None = None
    placement: str | None = None
    # An image job's inputs: {"image": "sha256:…", "last_image": …, "fit": "crop"} (None: text).
    inputs: dict[str, JsonValue] | None = None


class JobProgress(EventData):
    event_type = EventType.JOB_PROGRESS
    job_id: str
    stage: Stage
    step: int | None = None
    total_steps: int | None = None
    elapsed_s: float = Field(ge=0)
    # Two-expert models (Wan 2.2 A14B): 1 = the high-noise expert ran this step, 2 = low noise.
    expert: int | None = Field(default=None, ge=1, le=2)


class JobRetrying(EventData):
    event_type = EventType.JOB_RETRYING
    job_id: str
    attempt: int = Field(ge=1)
    reason: str
    error_code: str
    # The change applied before the next attempt; None when the job is re-run as it was.
    change: dict[str, JsonValue] | None = None


class JobSucceeded(EventData):
    event_type = EventType.JOB_SUCCEEDED
    job_id: str
    output: str
    changes: list[dict[str, JsonValue]] = Field(default_factory=list)
    duration_s: float = Field(ge=0)


class JobFailed(EventData):
    event_type = EventType.JOB_FAILED
    job_id: str
    error: dict[str, JsonValue] = Field(description="The user-facing error, as JSON")


class JobCancelled(EventData):
    event_type = EventType.JOB_CANCELLED
    job_id: str


class ModelStatus(EventData):
    event_type = EventType.MODEL_STATUS
    model: str
    availability: ModelAvailability


class ModelDownloadProgress(EventData):
    event_type = EventType.MODEL_DOWNLOAD_PROGRESS
    model: str
    file: str
    file_bytes: int = Field(ge=0)
    file_total: int | None = None
    bytes: int = Field(ge=0)
    total: int | None = None


class ModelVerified(EventData):
    event_type = EventType.MODEL_VERIFIED
    model: str
    ok: bool
    problems: list[str] = Field(default_factory=list)


class ModelRepaired(EventData):
    event_type = EventType.MODEL_REPAIRED
    model: str
    files: list[str] = Field(default_factory=list)


class VramSample(EventData):
    """Memory of one device, in bytes."""

    event_type = EventType.VRAM_SAMPLE
    source: VramSource
    device: str
    total: int = Field(ge=0)
    used: int = Field(ge=0)
    free: int = Field(ge=0)
    process_used: int | None = None


class VramPressure(EventData):
    event_type = EventType.VRAM_PRESSURE
    device: str
    level: PressureLevel
    previous: PressureLevel


class RecoveryAttempt(EventData):
    event_type = EventType.RECOVERY_ATTEMPT
    job_id: str | None = None
    step: str
    error_code: str


class RecoveryResult(EventData):
    event_type = EventType.RECOVERY_RESULT
    job_id: str | None = None
    step: str
    ok: bool
    detail: str = ""


# Every data model, keyed by its type. A test checks that each EventType has exactly one.
DATA_MODELS: dict[EventType, type[EventData]] = {
    model.event_type: model
    for model in (
        SupervisorTransition,
        ActorStarted,
        ActorStopped,
        ActorCrashed,
        ActorRestarted,
        BusLagged,
        BusGap,
        JobQueued,
        JobStarted,
        JobProgress,
        JobRetrying,
        JobSucceeded,
        JobFailed,
        JobCancelled,
        ModelStatus,
        ModelDownloadProgress,
        ModelVerified,
        ModelRepaired,
        VramSample,
        VramPressure,
        RecoveryAttempt,
        RecoveryResult,
    )
}


class _WireEnvelope(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seq: int = Field(ge=0)
    ts: float
    type: EventType
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Event:
    """One published event. ``seq`` is the bus's monotonic number, ``ts`` unix seconds."""

    seq: int
    ts: float
    data: EventData
    _json: list[str] = field(default_factory=list, repr=False, compare=False)

    @property
    def type(self) -> EventType:
        return self.data.event_type

    def to_json(self) -> str:
        """The envelope as compact JSON (the journal row and the WebSocket frame)."""
        if not self._json:
            data = self.data.model_dump_json()
            self._json.append(
                f'{{"seq":{self.seq},"ts":{json.dumps(self.ts)},'
                f'"type":"{self.data.event_type.value}","data":{data}}}'
            )
        return self._json[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts": self.ts,
            "type": self.data.event_type.value,
            "data": self.data.model_dump(mode="json"),
        }

    @classmethod
    def from_json(cls, text: str | bytes) -> Event:
        """Validate one envelope (raises pydantic.ValidationError when it is not an event)."""
        wire = _WireEnvelope.model_validate_json(text)
        data = DATA_MODELS[wire.type].model_validate(wire.data)
        event = cls(seq=wire.seq, ts=wire.ts, data=data)
        event._json.append(text if isinstance(text, str) else text.decode())
        return event
