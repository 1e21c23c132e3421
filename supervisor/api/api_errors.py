"""Every error the HTTP API returns is a UserError (JSON), with a fitting status.

`UserErrorRoute` is the route class of genvisor's router: it turns request validation errors
and HTTP exceptions raised by genvisor's endpoints into UserError bodies, so the contract holds
also when a host app mounts the router (host apps keep their own handlers for their routes).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from supervisor.errors import Category, ErrorCode, Severity, Stage, TechnicalDetails, UserError

__all__ = [
    "ApiError",
    "UserErrorRoute",
    "field_errors_response",
    "http_exception_handler",
    "route_class",
    "user_error_response",
]

_FIELD_CODES = {
    "num_frames": ErrorCode.INPUT_FRAMES,
    "frames": ErrorCode.INPUT_FRAMES,
    "width": ErrorCode.INPUT_RESOLUTION,
    "height": ErrorCode.INPUT_RESOLUTION,
    "prompt": ErrorCode.INPUT_PROMPT,
    "negative_prompt": ErrorCode.INPUT_PROMPT,
}


class ApiError(HTTPException):
    """An HTTP error with the words a person needs (raised by endpoints)."""

    def __init__(
        self,
        status_code: int,
        *,
        code: ErrorCode,
        title: str,
        message: str,
        suggestions: Sequence[str] = (),
        job_id: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status_code, detail=message, headers=headers)
        self.code = code
        self.title = title
        self.message = message
        self.suggestions = list(suggestions)
        self.job_id = job_id


def user_error_response(
    status_code: int,
    *,
    code: ErrorCode,
    title: str,
    message: str,
    suggestions: Sequence[str] = (),
    job_id: str | None = None,
    extra: dict[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    error = UserError(
        code=code,
        category=code.category,
        severity=Severity.LOW if status_code < 500 else Severity.HIGH,
        title=title,
        message=message,
        suggestions=list(suggestions)[:7],
        technical=TechnicalDetails(
            type=f"http.{status_code}", message=message, stage=Stage.API, device=None, traceback=""
        ),
        job_id=job_id,
    )
    body = error.model_dump(mode="json")
    body.update(extra or {})
    return JSONResponse(body, status_code=status_code, headers=dict(headers or {}))


def field_errors_response(errors: list[dict[str, Any]]) -> JSONResponse:
    """422 naming each bad field, the value given and what is allowed."""
    fields = [e["field"] for e in errors]
    code = (
        _FIELD_CODES.get(fields[0], ErrorCode.INPUT_INVALID) if fields else ErrorCode.INPUT_INVALID
    )
    if code.category is not Category.INPUT_VALIDATION:
        code = ErrorCode.INPUT_INVALID
    message = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return user_error_response(
        422,
        code=code,
        title="The request was not valid",
        message=message,
        suggestions=["Correct the fields named above and send the request again."],
        extra={"errors": errors},
    )


def _from_validation(exc: RequestValidationError) -> JSONResponse:
    errors = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
        field = ".".join(loc) or "body"
        message = str(err.get("msg", "invalid"))
        if err.get("type") == "json_invalid":
            field, message = "body", "the body is not valid JSON"
        entry: dict[str, Any] = {"field": field, "message": message}
        if "input" in err and isinstance(err["input"], (str, int, float, bool)):
            value = err["input"]
            # NaN and infinities parse from JSON bodies but can not be written back as JSON.
            if isinstance(value, str):
                value = value[:200]
            elif isinstance(value, float) and not math.isfinite(value):
                value = str(value)
            entry["value"] = value
        errors.append(entry)
    return field_errors_response(errors)


async def http_exception_handler(request: Request, exc: Exception) -> Response:
    """App-level handler of the stand-alone server: unknown paths and methods get UserErrors too."""
    assert isinstance(exc, StarletteHTTPException)
    return _from_http(HTTPException(exc.status_code, detail=exc.detail, headers=exc.headers))


def _from_http(exc: HTTPException) -> JSONResponse:
    if isinstance(exc, ApiError):
        return user_error_response(
            exc.status_code,
            code=exc.code,
            title=exc.title,
            message=exc.message,
            suggestions=exc.suggestions,
            job_id=exc.job_id,
            headers=exc.headers,
        )
    return user_error_response(
        exc.status_code,
        code=ErrorCode.INPUT_INVALID,
        title="The request was refused",
        message=str(exc.detail),
        headers=exc.headers,
    )


def _body_refusal(request: Request, limit: int) -> JSONResponse | None:
    if request.method not in ("POST", "PUT", "PATCH"):
        return None
    length = request.headers.get("content-length")
    if length is None:
        if "chunked" in request.headers.get("transfer-encoding", "").lower():
            return user_error_response(
                411,
                code=ErrorCode.INPUT_INVALID,
                title="Length required",
                message="send the request body with a Content-Length header",
            )
        return None
    if not length.isdigit() or int(length) > limit:
        return user_error_response(
            413,
            code=ErrorCode.INPUT_INVALID,
            title="The request is too large",
            message=f"request bodies are limited to {limit} bytes (setting max_request_bytes)",
        )
    return None


def route_class(max_body_bytes: int) -> type[UserErrorRoute]:
    """The route class for one server, with its body limit."""
    return type("BoundedUserErrorRoute", (UserErrorRoute,), {"max_body_bytes": max_body_bytes})


class UserErrorRoute(APIRoute):
    # Request bodies larger than this are refused before they are read (413).
    max_body_bytes: int = 65536

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        original = super().get_route_handler()
        limit = self.max_body_bytes

        async def handler(request: Request) -> Response:
            refused = _body_refusal(request, limit)
            if refused is not None:
                return refused
            try:
                return await original(request)
            except RequestValidationError as exc:
                return _from_validation(exc)
            except HTTPException as exc:
                return _from_http(exc)

        return handler
