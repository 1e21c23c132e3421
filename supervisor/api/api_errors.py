"""Every error the HTTP API returns is a UserError (JSON), with a fitting status.

`UserErrorRoute` is the route class of genvisor's router: it turns request validation errors
and HTTP exceptions raised by genvisor's endpoints into UserError bodies, so the contract holds
also when a host app mounts the router (host apps keep their own handlers for their routes).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, Protocol

from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException

from supervisor.core.store_health import StoreCorrupted
from supervisor.errors import (
    Category,
    ErrorCode,
    ErrorReport,
    Severity,
    Stage,
    TechnicalDetails,
    UserError,
    explain,
)
from supervisor.errors.validation_words import plain_field_message

__all__ = [
    "ApiError",
    "RequestGuard",
    "UserErrorRoute",
    "field_errors_response",
    "http_error_response",
    "http_exception_handler",
    "internal_error_response",
    "json_safe",
    "route_class",
    "unhandled_exception_handler",
    "user_error_response",
]

log = logging.getLogger("genvisor.api")

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


class RequestGuard(Protocol):
    """A check a route runs on the request headers before its body is read (the API token);
    also a FastAPI dependency that raises the refusal."""

    def refusal(self, headers: Mapping[str, str]) -> ApiError | None: ...

    def __call__(self, request: Request) -> None: ...


def json_safe(value: Any) -> Any:
    """`value` with every string made encodable as UTF-8: a lone UTF-16 surrogate (valid in
    JSON's ``\\ud800`` escapes and in Python strings, invalid in UTF-8) becomes the text
    ``\\ud800``. Error bodies echo what the client sent, so they must survive any input."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {json_safe(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


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
    return JSONResponse(json_safe(body), status_code=status_code, headers=dict(headers or {}))


def internal_error_response(exc: Exception) -> JSONResponse:
    """500 (503 for a damaged store) with the catalogued UserError for `exc` (categorized like
    any failure), without its traceback: that goes to the server's log, never to the client."""
    try:
        error = explain(ErrorReport.from_exception(exc, stage=Stage.API))
    except Exception:  # the last resort must not fail itself: fixed words, still a UserError
        log.exception("explaining a %s failed", type(exc).__name__)
        return user_error_response(
            500,
            code=ErrorCode.UNKNOWN_ERROR,
            title="Something went wrong",
            message=f"the server failed with {type(exc).__name__}",
        )
    technical = error.technical.model_copy(update={"traceback": ""})
    body = error.model_copy(update={"technical": technical}).model_dump(mode="json")
    # A damaged store is the service's condition, not a bug: 503 until the restart heals it.
    status_code = 503 if isinstance(exc, StoreCorrupted) else 500
    return JSONResponse(json_safe(body), status_code=status_code)


async def unhandled_exception_handler(request: Request, exc: Exception) -> Response:
    """App-level last resort (Starlette's ServerErrorMiddleware calls it, then re-raises so the
    server logs the traceback): the client still gets a UserError, never plain text."""
    return internal_error_response(exc)


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
        # In genvisor's words: no library prefix, the nearest valid values for a step rule.
        message = plain_field_message(str(err.get("msg", "invalid")), err.get("input"))
        if err.get("type") == "json_invalid":
            field, message = "body", "the body is not valid JSON"
        elif err.get("type") == "string_unicode":
            message = "must be valid Unicode text (it holds a lone UTF-16 surrogate like \\ud800)"
            if not loc and isinstance(err.get("input"), str):
                # An object key: pydantic reports it at the object, with the key as the input.
                field, message = str(err["input"])[:200], "is not a known field; " + message
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
    plain = HTTPException(exc.status_code, detail=exc.detail, headers=exc.headers)
    return http_error_response(plain)


def http_error_response(exc: HTTPException) -> JSONResponse:
    """The UserError response for an HTTP exception (an `ApiError` keeps its words)."""
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


def route_class(max_body_bytes: int, guard: RequestGuard | None = None) -> type[UserErrorRoute]:
    """The route class for one server, with its body limit and its token guard."""
    return type(
        "BoundedUserErrorRoute",
        (UserErrorRoute,),
        {"max_body_bytes": max_body_bytes, "guard": guard},
    )


class UserErrorRoute(APIRoute):
    # Request bodies larger than this are refused before they are read (413).
    max_body_bytes: int = 65536
    # A route that lists this guard among its dependencies runs it first, on the headers
    # alone: a client without the token learns nothing (no 411/413/422) about the body it sent.
    # The dependency still runs as FastAPI's own (a second, identical check).
    guard: RequestGuard | None = None

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        original = super().get_route_handler()
        limit = self.max_body_bytes
        guard = self.guard
        guarded = guard is not None and any(d.dependency is guard for d in self.dependencies)

        async def handler(request: Request) -> Response:
            if guarded and guard is not None and (denied := guard.refusal(request.headers)):
                return http_error_response(denied)
            refused = _body_refusal(request, limit)
            if refused is not None:
                return refused
            try:
                return await original(request)
            except RequestValidationError as exc:
                return _from_validation(exc)
            except HTTPException as exc:
                return http_error_response(exc)
            except StarletteHTTPException as exc:
                # FastAPI's own refusals (a body that is not UTF-8 or not JSON: 400) are
                # Starlette's class, not FastAPI's: the client's fault, said as such.
                return http_error_response(
                    HTTPException(exc.status_code, detail=exc.detail, headers=exc.headers)
                )
            except Exception as exc:
                # Also when a host app mounts the router: its 500s are UserErrors too. Logged
                # here, with the traceback, because the exception stops here.
                log.exception("%s %s failed", request.method, request.url.path)
                return internal_error_response(exc)

        return handler
