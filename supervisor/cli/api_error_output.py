"""How client commands tell a person what the server refused: the UserError, in plain lines.

Invalid input (422) becomes one line per field (``genvisor: frames=6: must be 4k+1 ...``) so a
mistyped option reads as one clear line; any other refusal is its title and message on one
line, then its suggestions.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any, TextIO

from supervisor.errors.validation_words import plain_field_message

__all__ = ["error_lines", "print_api_error", "print_user_error"]


def _field_line(error: Mapping[str, Any]) -> str:
    field = error.get("field", "?")
    value = error.get("value")
    shown = f"{field}={value!r}" if value is not None else str(field)
    words = plain_field_message(str(error.get("message") or "not valid"), value)
    return f"genvisor: invalid {shown}: {words}"


def error_lines(status: int, body: Any) -> list[str]:
    """The lines that explain an error answer (`body` as the server sent it)."""
    if not isinstance(body, Mapping):
        return [f"genvisor: the server answered {status}: {body!r}"[:500]]
    errors = body.get("errors")
    if status == 422 and isinstance(errors, list) and errors:
        return [_field_line(e) for e in errors if isinstance(e, Mapping)]
    title = body.get("title") or f"the server answered {status}"
    message = body.get("message") or body.get("detail") or ""
    lines = [f"genvisor: {title}" + (f": {message}" if message else "")]
    lines += [f"  - {s}" for s in body.get("suggestions") or []]
    return lines


def print_api_error(status: int, body: Any, *, file: TextIO | None = None) -> None:
    for line in error_lines(status, body):
        print(line, file=file or sys.stderr)


def print_user_error(error: Mapping[str, Any], *, file: TextIO | None = None) -> None:
    """A failed job's UserError: title, message, suggestions (and its code, to search for)."""
    out = file or sys.stderr
    code = error.get("code")
    print(f"{error.get('title', 'The job failed')}" + (f"  [{code}]" if code else ""), file=out)
    if error.get("message"):
        print(f"  {error['message']}", file=out)
    suggestions = error.get("suggestions") or []
    if suggestions:
        print("  What you can do:", file=out)
        for suggestion in suggestions:
            print(f"  - {suggestion}", file=out)
