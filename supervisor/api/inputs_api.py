"""Uploaded images: `POST /v1/inputs` (multipart, field `file`) and `GET /v1/inputs/{id}`.

An upload is checked before it is stored (`supervisor.jobs.image_checks`: PNG, JPEG or WebP by
content, a byte limit read as the body streams in, a pixel limit on the header before any
decoding, a full decode) and stored content-addressed: the same bytes uploaded twice are one
input. Every refusal is a UserError naming the field `file`; nothing is stored then.

These routes have their own body limit (`max_input_bytes`), the only routes allowed past
`max_request_bytes`.
"""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter, Request, status
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile

from supervisor.api.api_errors import ApiError, field_errors_response, user_error_response
from supervisor.core.params import INPUT_ID_PATTERN
from supervisor.errors import ErrorCode
from supervisor.jobs.image_checks import ImageRejected, inspect_image
from supervisor.runtime import Runtime

__all__ = ["add_input_routes"]

_CHUNK = 1 << 16


def add_input_routes(router: APIRouter, runtime: Runtime, guarded: list[Any]) -> None:
    settings = runtime.settings

    @router.post(
        "/v1/inputs",
        tags=["inputs"],
        dependencies=guarded,
        status_code=status.HTTP_201_CREATED,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "required": ["file"],
                            "properties": {"file": {"type": "string", "format": "binary"}},
                        }
                    }
                },
            }
        },
    )
    async def upload_input(request: Request) -> JSONResponse:
        """Store an image (PNG, JPEG or WebP) a job can start from; answers its id
        (`sha256:<hex>`), format and upright size. The same bytes give the same id (200)."""
        data = await _read_file_field(request, settings.max_input_bytes)
        if isinstance(data, JSONResponse):
            return data
        try:
            facts = await anyio.to_thread.run_sync(
                lambda: inspect_image(data, max_pixels=settings.max_input_pixels)
            )
        except ImageRejected as exc:
            if exc.too_large:
                return _too_large(exc.message)
            return _field_error(exc.message)
        stored = await anyio.to_thread.run_sync(runtime.inputs.put, data, facts)
        return JSONResponse(
            stored.public(),
            status_code=status.HTTP_201_CREATED if stored.created else status.HTTP_200_OK,
        )

    @router.get("/v1/inputs/{input_id}", tags=["inputs"], dependencies=guarded)
    async def get_input(input_id: str) -> dict[str, Any]:
        """An uploaded input's format and upright size."""
        stored = await anyio.to_thread.run_sync(runtime.inputs.get, input_id)
        if stored is None:
            raise ApiError(
                status.HTTP_404_NOT_FOUND,
                code=ErrorCode.INPUT_INVALID,
                title="No such input",
                message=f"there is no input {input_id[:80]!r} (ids look like {INPUT_ID_PATTERN})",
                suggestions=["Upload the image with POST /v1/inputs and use the id it answers."],
            )
        return stored.public()


async def _read_file_field(request: Request, limit: int) -> bytes | JSONResponse:
    """The bytes of the multipart field `file`, refused with 413 past `limit` (the form parser
    spools a large part to a temporary file; this reads at most limit + 1 bytes of it)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return _field_error("send the image as multipart/form-data with the field `file`")
    try:
        form = await request.form(max_files=1, max_fields=4, max_part_size=limit + 1)
    except Exception as exc:  # the multipart parser's errors: a malformed body is the client's
        return _field_error(f"the multipart body could not be read ({exc})")
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            return _field_error("the multipart field `file` is missing (or is not a file)")
        data = await upload.read(limit + 1)
    finally:
        await form.close()
    if len(data) > limit:
        return _too_large(f"an upload may be at most {limit} bytes (setting max_input_bytes)")
    return data


def _field_error(message: str) -> JSONResponse:
    return field_errors_response([{"field": "file", "value": None, "message": message}])


def _too_large(message: str) -> JSONResponse:
    return user_error_response(
        status.HTTP_413_CONTENT_TOO_LARGE,
        code=ErrorCode.INPUT_INVALID,
        title="The image is too large",
        message=f"file: {message}",
        suggestions=["Send a smaller image: a video frame needs at most a few megapixels."],
        extra={"errors": [{"field": "file", "value": None, "message": message}]},
    )
