"""The versioned message protocol between the generator actor and its worker process.

Every frame on the channel is one JSON object `{"v": PROTOCOL_VERSION, "msg": {...}}` where
`msg` carries a `kind` discriminator. Both sides validate with pydantic, so a malformed or
foreign frame is a `ProtocolError`, never a half-read message.

Invariant: this module imports no torch/diffusers — the control process imports it.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    Field,
    TypeAdapter,
    ValidationError,
)

from supervisor.core.exceptions import ProtocolError
from supervisor.core.params import (
    JOB_ID_PATTERN,
    Dtype,
    Fit,
    GenerationParams,
    Mode,
    Offload,
    PipelineClass,
    PipelineOptions,
)
from supervisor.core.params import FrozenModel as _Frozen
from supervisor.core.stages import Stage
from supervisor.errors.report import ErrorReport

__all__ = [
    "JOB_ID_PATTERN",
    "PROTOCOL_VERSION",
    "Cancel",
    "Cancelled",
    "ControlMessage",
    "Done",
    "Dtype",
    "Failed",
    "Fit",
    "Generate",
    "GenerationParams",
    "Heartbeat",
    "Load",
    "Loaded",
    "Mode",
    "Offload",
    "PipelineClass",
    "PipelineOptions",
    "Ping",
    "Progress",
    "Ready",
    "Shutdown",
    "StageTiming",
    "WorkerMessage",
    "decode_control",
    "decode_worker",
    "encode_message",
]

PROTOCOL_VERSION = 1


# --- control -> worker -------------------------------------------------------------------


class Load(_Frozen):
    kind: Literal["load"] = "load"
    model_path: str
    model_name: str = ""
    options: PipelineOptions = PipelineOptions()
    # From the registry entry; image jobs on a text pipeline use its image form (from_pipe).
    pipeline_class: PipelineClass = PipelineClass.WAN


class Generate(_Frozen):
    kind: Literal["generate"] = "generate"
    job_id: str = Field(pattern=JOB_ID_PATTERN)
    params: GenerationParams
    options: PipelineOptions = PipelineOptions()
    output_dir: str
    # A latents file kept by an earlier decode failure: skip encode and denoise.
    decode_only_from: str | None = None
    # What the system changed on the way (recovery steps), recorded in the sidecar.
    applied_changes: tuple[str, ...] = ()
    # Stored inputs (files the server wrote under its home; never a client's string): the first
    # frame, and the last for a first-last-frame job, fitted to the size as `fit` says.
    image_path: str | None = None
    last_image_path: str | None = None
    fit: Fit = Fit.CROP


class Cancel(_Frozen):
    kind: Literal["cancel"] = "cancel"
    job_id: str


class Shutdown(_Frozen):
    kind: Literal["shutdown"] = "shutdown"


class Ping(_Frozen):
    kind: Literal["ping"] = "ping"


# --- worker -> control -------------------------------------------------------------------


class Ready(_Frozen):
    kind: Literal["ready"] = "ready"
    pid: int
    protocol: int = PROTOCOL_VERSION
    device: str
    torch_version: str
    diffusers_version: str
    memory_limit_bytes: int | None = None
    # Address space (VmSize) after torch and diffusers are imported: what a CPU cap must exceed.
    baseline_address_space_bytes: int | None = None


class Heartbeat(_Frozen):
    kind: Literal["heartbeat"] = "heartbeat"
    ts: float
    rss_bytes: int
    device_allocated: int | None = None
    device_peak: int | None = None
    busy_job_id: str | None = None
    # When the job thread last reported progress: heartbeats come from their own thread, so a
    # job thread stuck inside one step shows here while the process itself still answers.
    last_progress_ts: float | None = None


class Progress(_Frozen):
    kind: Literal["progress"] = "progress"
    job_id: str
    stage: Stage
    step: int | None = None
    total: int | None = None
    elapsed_s: float
    # Two-expert models (Wan 2.2 A14B): which expert ran this denoising step, 1 (high noise,
    # `transformer`) or 2 (low noise, `transformer_2`).
    expert: int | None = Field(default=None, ge=1, le=2)


class StageTiming(_Frozen):
    kind: Literal["stage_timing"] = "stage_timing"
    job_id: str
    stage: Stage
    seconds: float


class Done(_Frozen):
    kind: Literal["done"] = "done"
    job_id: str
    output_path: str
    sidecar_path: str
    timings: dict[Stage, float]
    peak_memory_bytes: int
    # How far memory rose above what was in use when the job started (this job's own peak):
    # what pre-flight calibration compares its activation estimate with. None: not measurable.
    peak_growth_bytes: int | None = None
    params_used: GenerationParams
    options_used: PipelineOptions


class Failed(_Frozen):
    kind: Literal["failed"] = "failed"
    job_id: str | None
    report: ErrorReport
    # Kept after a decode failure so the decode alone can be re-run (Generate.decode_only_from).
    latents_path: str | None = None


class Cancelled(_Frozen):
    kind: Literal["cancelled"] = "cancelled"
    job_id: str
    stage: Stage | None = None


class Loaded(_Frozen):
    kind: Literal["loaded"] = "loaded"
    model: str
    options: PipelineOptions
    load_s: float
    # False when only cheap options changed on an already loaded pipeline.
    reloaded: bool = True


ControlMessage = Annotated[Load | Generate | Cancel | Shutdown | Ping, Field(discriminator="kind")]
WorkerMessage = Annotated[
    Ready | Heartbeat | Progress | StageTiming | Done | Failed | Cancelled | Loaded,
    Field(discriminator="kind"),
]

_CONTROL: TypeAdapter[Load | Generate | Cancel | Shutdown | Ping] = TypeAdapter(ControlMessage)
_WORKER: TypeAdapter[
    Ready | Heartbeat | Progress | StageTiming | Done | Failed | Cancelled | Loaded
] = TypeAdapter(WorkerMessage)


def encode_message(msg: BaseModel) -> bytes:
    body = {"v": PROTOCOL_VERSION, "msg": msg.model_dump(mode="json")}
    return json.dumps(body, separators=(",", ":")).encode()


def _unwrap(frame: bytes, pid: int | None) -> object:
    try:
        body = json.loads(frame)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(pid=pid, detail=f"frame is not JSON: {exc}") from exc
    if not isinstance(body, dict) or "msg" not in body:
        raise ProtocolError(pid=pid, detail="frame is not an envelope {v, msg}")
    if body.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(
            pid=pid, detail=f"protocol version {body.get('v')!r}, expected {PROTOCOL_VERSION}"
        )
    return body["msg"]


def decode_control(
    frame: bytes, *, pid: int | None = None
) -> Load | Generate | Cancel | Shutdown | Ping:
    try:
        return _CONTROL.validate_python(_unwrap(frame, pid))
    except ValidationError as exc:
        raise ProtocolError(pid=pid, detail=f"bad control message: {exc}") from exc


def decode_worker(
    frame: bytes, *, pid: int | None = None
) -> Ready | Heartbeat | Progress | StageTiming | Done | Failed | Cancelled | Loaded:
    try:
        return _WORKER.validate_python(_unwrap(frame, pid))
    except ValidationError as exc:
        raise ProtocolError(pid=pid, detail=f"bad worker message: {exc}") from exc
