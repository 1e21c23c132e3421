"""The jobs endpoints: submit, list, show, cancel, download the video.

Invariants: a job is committed to the store before 202 is answered; nothing a client sends
becomes a path (job ids are checked against the server's own alphabet and outputs are looked up
in the store); every refusal is a UserError naming the field and what is allowed.
"""

from __future__ import annotations

import math
import random
import re
from pathlib import Path
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Query, Request, status
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from actors.models.registry import ModelEntry
from supervisor.api.api_errors import ApiError, field_errors_response
from supervisor.api.state_view import job_view
from supervisor.core.params import (
    INPUT_ID_PATTERN,
    JOB_ID_PATTERN,
    Fit,
    GenerationParams,
    JobInputs,
    Mode,
)
from supervisor.errors import ErrorCode
from supervisor.jobs import Job, JobStatus, new_job_id
from supervisor.jobs.input_store import StoredInput
from supervisor.runtime import Runtime
from supervisor.supervision.job_flow import CancelRefused
from supervisor.supervision.messages import CancelRequest
from supervisor.supervision.state_machine import State

__all__ = ["JobRequest", "add_job_routes"]

_JOB_ID = re.compile(JOB_ID_PATTERN)
# Hard ceilings of the schema; the registry and settings narrow them per model and server.
_MAX_TEXT = 20_000


class JobRequest(BaseModel):
    """A generation request. Omitted parameters take the model's defaults."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    model: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    prompt: str = Field(min_length=1, max_length=_MAX_TEXT)
    negative_prompt: str = Field(default="", max_length=_MAX_TEXT)
    width: int | None = Field(default=None, ge=16, le=4096, multiple_of=16)
    height: int | None = Field(default=None, ge=16, le=4096, multiple_of=16)
    frames: int | None = Field(default=None, ge=1, le=1025)
    steps: int | None = Field(default=None, ge=1, le=1000)
    guidance: float | None = Field(default=None, ge=0, le=50)
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    fps: int | None = Field(default=None, ge=1, le=120)
    allow_output_changes: bool = True
    priority: int = Field(default=0, ge=-10, le=10)
    image: str | None = Field(
        default=None,
        pattern=INPUT_ID_PATTERN,
        description="The first frame: an input id from POST /v1/inputs (image-to-video)",
    )
    last_image: str | None = Field(
        default=None,
        pattern=INPUT_ID_PATTERN,
        description="The last frame, with `image` (first-last-frame video)",
    )
    fit: Fit = Field(
        default=Fit.CROP,
        description="How the images meet the size: crop (keep the aspect, cut the overflow), "
        "pad (black bars) or stretch. Width and height default to the image's aspect at the "
        "model's default area.",
    )

    @field_validator("frames")
    @classmethod
    def _four_k_plus_one(cls, value: int | None) -> int | None:
        if value is not None and (value - 1) % 4:
            raise ValueError(f"must be 4k+1 (1, 5, 9, ..., 17, 33, 81), got {value}")
        return value


def _mode_error(entry: ModelEntry, mode: Mode, entries: list[ModelEntry]) -> dict[str, Any]:
    fits = [e.name for e in entries if e.serves(mode)]
    modes = ", ".join(m.value for m in entry.modes)
    if mode is Mode.T2V:
        return {
            "field": "image",
            "value": None,
            "message": f"{entry.name} starts from an image ({modes}): give `image`, an id from "
            f"POST /v1/inputs; text-only models: {', '.join(fits) or 'none'}",
        }
    field, what = ("last_image", "a last frame") if mode is Mode.FLF2V else ("image", "an image")
    return {
        "field": field,
        "value": None,
        "message": f"{entry.name} does not take {what} ({modes}); "
        f"models that do: {', '.join(fits) or 'none'}",
    }


def _size(body: JobRequest, entry: ModelEntry, image: tuple[int, int] | None) -> tuple[int, int]:
    """Width and height as asked; what is omitted follows the image's aspect at the model's
    default area (rounded to the model's size multiple), else the model's default."""
    d, m = entry.defaults, entry.size_multiple
    if image is None or (body.width and body.height):
        return body.width or d.width, body.height or d.height
    aspect = image[0] / image[1]

    def rounded(value: float, top: int) -> int:
        return int(min(max(m, round(value / m) * m), top - top % m))

    lim = entry.limits
    if body.width:
        return body.width, rounded(body.width / aspect, lim.max_height)
    if body.height:
        return rounded(body.height * aspect, lim.max_width), body.height
    area = d.width * d.height
    return (
        rounded(math.sqrt(area * aspect), lim.max_width),
        rounded(math.sqrt(area / aspect), lim.max_height),
    )


class JobAccepted(BaseModel):
    id: str
    status: JobStatus
    queue_position: int | None
    model: str
    params: dict[str, Any]


def add_job_routes(router: APIRouter, runtime: Runtime, guarded: list[Any]) -> None:
    settings = runtime.settings

    async def _job_or_404(job_id: str) -> Job:
        job = await runtime.store.get(job_id) if _JOB_ID.match(job_id) else None
        if job is None:
            raise ApiError(
                status.HTTP_404_NOT_FOUND,
                code=ErrorCode.INPUT_INVALID,
                title="No such job",
                message=f"there is no job with id {job_id[:80]!r}",
                suggestions=["List jobs with GET /v1/jobs or `genvisor jobs list`."],
            )
        return job

    @router.post(
        "/v1/jobs",
        tags=["jobs"],
        status_code=status.HTTP_202_ACCEPTED,
        dependencies=guarded,
        response_model=JobAccepted,
    )
    async def submit(body: JobRequest, request: Request) -> JSONResponse:
        """Queue a generation. Answered once the job is durable (202), with its position."""
        state = runtime.supervisor.state
        if state not in (State.READY, State.DEGRADED, State.RECOVERING, State.STARTING):
            raise _not_accepting(runtime, state)
        # The inputs' records are files: read in a thread, never on the event loop.
        stored = await anyio.to_thread.run_sync(_stored_inputs, body)
        job = _build_job(body, stored)
        if isinstance(job, JSONResponse):
            return job
        if await runtime.store.waiting() >= settings.queue_max:
            raise ApiError(
                status.HTTP_429_TOO_MANY_REQUESTS,
                code=ErrorCode.SYSTEM_RESOURCE_LIMIT,
                title="The queue is full",
                message=f"{settings.queue_max} jobs are already waiting (setting queue_max).",
                suggestions=["Try again when some jobs have finished."],
                headers={"Retry-After": "30"},
            )
        await runtime.submit(job)
        position = await runtime.store.queue_position(job.id)
        accepted = JobAccepted(
            id=job.id,
            status=job.status,
            queue_position=position,
            model=job.model,
            params=job.params.model_dump(mode="json"),
        )
        return JSONResponse(
            accepted.model_dump(mode="json"),
            status_code=202,
            headers={"Location": str(request.url_for("get_job", job_id=job.id))},
        )

    def _stored_inputs(body: JobRequest) -> dict[str, StoredInput | None]:
        ids = (i for i in (body.image, body.last_image) if i is not None)
        return {input_id: runtime.inputs.get(input_id) for input_id in ids}

    def _build_job(body: JobRequest, stored: dict[str, StoredInput | None]) -> Job | JSONResponse:
        model = body.model or settings.default_model
        registry = runtime.registry
        if model not in registry:
            return field_errors_response(
                [
                    {
                        "field": "model",
                        "value": model,
                        "message": f"unknown model; allowed: {', '.join(registry.names())}",
                    }
                ]
            )
        entry = registry.get(model)
        d = entry.defaults
        errors = []
        if len(body.prompt) > settings.max_prompt_chars:
            errors.append(
                {
                    "field": "prompt",
                    "value": len(body.prompt),
                    "message": f"at most {settings.max_prompt_chars} characters",
                }
            )
        if len(body.negative_prompt) > settings.max_prompt_chars:
            errors.append(
                {
                    "field": "negative_prompt",
                    "value": len(body.negative_prompt),
                    "message": f"at most {settings.max_prompt_chars} characters",
                }
            )
        inputs, input_errors, image_size = _job_inputs(body, entry, stored)
        errors.extend(input_errors)
        width, height = _size(body, entry, image_size)
        m = entry.size_multiple
        errors.extend(
            {"field": field, "value": value, "message": f"must be a multiple of {m} for {model}"}
            for field, value in (("width", width), ("height", height))
            if value % m
        )
        frames, steps = body.frames or d.num_frames, body.steps or d.steps
        lim = entry.limits
        for field, value, top in (
            ("width", width, lim.max_width),
            ("height", height, lim.max_height),
            ("frames", frames, lim.max_frames),
            ("steps", steps, lim.max_steps),
        ):
            if value > top:
                errors.append(
                    {"field": field, "value": value, "message": f"at most {top} for model {model}"}
                )
        if errors:
            return field_errors_response(errors)
        params = GenerationParams(
            prompt=body.prompt,
            negative_prompt=body.negative_prompt,
            width=width,
            height=height,
            num_frames=frames,
            steps=steps,
            guidance_scale=body.guidance if body.guidance is not None else d.guidance_scale,
            seed=body.seed if body.seed is not None else random.randrange(2**31),
            fps=body.fps or d.fps,
        )
        return Job(
            id=new_job_id(),
            model=model,
            params=params,
            options=runtime.base_options(),
            allow_output_changes=body.allow_output_changes,
            priority=body.priority,
            inputs=inputs,
        )

    def _job_inputs(
        body: JobRequest, entry: ModelEntry, stored: dict[str, StoredInput | None]
    ) -> tuple[JobInputs | None, list[dict[str, Any]], tuple[int, int] | None]:
        """The job's inputs, each problem naming its field, and the first image's upright size."""
        inputs = JobInputs(image=body.image, last_image=body.last_image, fit=body.fit)
        errors: list[dict[str, Any]] = []
        if body.last_image is not None and body.image is None:
            errors.append(
                {"field": "last_image", "value": body.last_image, "message": "needs `image` too"}
            )
        elif not entry.serves(inputs.mode):
            errors.append(_mode_error(entry, inputs.mode, runtime.registry.entries()))
        size = None
        for field, input_id in (("image", body.image), ("last_image", body.last_image)):
            if input_id is None:
                continue
            found = stored.get(input_id)
            if found is None:
                errors.append(
                    {
                        "field": field,
                        "value": input_id,
                        "message": "no such input; upload the image with POST /v1/inputs",
                    }
                )
            elif field == "image":
                size = (found.width, found.height)
        return (inputs if body.image else None), errors, size

    @router.get("/v1/jobs", tags=["jobs"], dependencies=guarded)
    async def list_jobs(
        status_filter: Annotated[JobStatus | None, Query(alias="status")] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        # Bounded: SQLite integers are 64-bit; a larger offset must be a 422, not a 500.
        offset: Annotated[int, Query(ge=0, le=2**62)] = 0,
    ) -> dict[str, Any]:
        """Jobs, newest first, optionally of one status."""
        jobs = await runtime.store.list(status=status_filter, limit=limit, offset=offset)
        return {
            "jobs": [await job_view(runtime, j) for j in jobs],
            "limit": limit,
            "offset": offset,
            "counts": await runtime.store.counts(),
        }

    @router.get("/v1/jobs/{job_id}", tags=["jobs"], dependencies=guarded, name="get_job")
    async def get_job(job_id: str) -> dict[str, Any]:
        """Status, progress, attempts, applied changes, and the UserError if it failed."""
        return await job_view(runtime, await _job_or_404(job_id))

    @router.post(
        "/v1/jobs/{job_id}/cancel",
        tags=["jobs"],
        dependencies=guarded,
        status_code=status.HTTP_202_ACCEPTED,
    )
    async def cancel_job(job_id: str) -> dict[str, Any]:
        """Cancel a waiting job at once, or stop a running one at its next step."""
        await _job_or_404(job_id)
        try:
            await runtime.supervisor.ask(CancelRequest(job_id), object, timeout=10.0)
        except CancelRefused as exc:
            raise ApiError(
                status.HTTP_409_CONFLICT,
                code=ErrorCode.INPUT_INVALID,
                title="The job has already finished",
                message=str(exc),
                job_id=job_id,
            ) from None
        return await job_view(runtime, await _job_or_404(job_id))

    @router.get(
        "/v1/jobs/{job_id}/output", tags=["jobs"], dependencies=guarded, response_class=FileResponse
    )
    async def job_output(job_id: str) -> FileResponse:
        """The MP4 (H.264), with range requests for seeking."""
        job = await _job_or_404(job_id)
        path = Path(job.output_path) if job.output_path else None
        inside = path is not None and path.resolve().parent == runtime.output_dir.resolve()
        if (
            job.status is not JobStatus.SUCCEEDED
            or path is None
            or not inside
            or not path.is_file()
        ):
            raise ApiError(
                status.HTTP_409_CONFLICT if not job.terminal else status.HTTP_404_NOT_FOUND,
                code=ErrorCode.INPUT_INVALID,
                title="No video for this job",
                message=f"job {job_id} is {job.status.value}; only a succeeded job has a video",
                job_id=job_id,
            )
        return FileResponse(path, media_type="video/mp4", filename=f"{job.id}.mp4")


def _not_accepting(runtime: Runtime, state: State) -> ApiError:
    """503 for a halted (or stopping) supervisor, saying why it halted: the code and reason of
    the transition that halted it (a child past its restart intensity)."""
    history = runtime.supervisor.machine.history
    last = history[-1] if history else None
    code = ErrorCode.WORKER_CRASHED if state is State.HALTED else ErrorCode.CONFIG_INVALID
    why = f"The server is {state.value}."
    if state is State.HALTED:
        why = "The supervisor halted"
        if last is not None and last.to_state is State.HALTED:
            code = ErrorCode(last.error_code) if last.error_code in _CODES else code
            why += f": {last.reason}"
        why += ". Nothing new is accepted until an operator resets it."
    return ApiError(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        code=code,
        title=f"genvisor is {state.value} and takes no new jobs",
        message=why,
        suggestions=[
            "Read the reason with `genvisor state`.",
            "Reset it with `genvisor reset` or POST /v1/supervisor/reset.",
        ],
        headers={"Retry-After": "30"},
    )


_CODES = frozenset(c.value for c in ErrorCode)
