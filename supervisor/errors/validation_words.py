"""A refused field in plain words: validation messages without the library's prefixes
("Value error, ", "Input should be"), and with the nearest valid values where the rule is a
step (a multiple of 16, 4k+1 frames): `width 33` → "must be a multiple of 16 (nearest: 32 or
48)". Pure text in, text out: the API's 422 answer and the CLI both use it."""

from __future__ import annotations

import re

__all__ = ["nearest_valid", "plain_field_message"]

_PREFIXES = ("Value error, ", "Assertion failed, ")
_REWRITES = (
    ("Input should be greater than or equal to ", "must be at least "),
    ("Input should be less than or equal to ", "must be at most "),
    ("Input should be greater than ", "must be more than "),
    ("Input should be less than ", "must be less than "),
    ("Input should be a valid integer", "must be a whole number"),
    ("Input should be a valid number", "must be a number"),
    ("Input should be ", "must be "),
    ("Extra inputs are not permitted", "is not a known field"),
    ("Field required", "is required"),
)
_MULTIPLE = re.compile(r"multiple of (\d+)")
_FOUR_K_PLUS_ONE = "4k+1"


def _whole(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    # Invariant: a client's string is read as a number only when it is short; Python refuses
    # to convert more than 4300 digits (ValueError), and no size or count here has 19.
    text = value.strip() if isinstance(value, str) else ""
    if 0 < len(text) <= 18 and text.lstrip("-").isdigit():
        return int(text)
    return None


def nearest_valid(message: str, value: object) -> list[int]:
    """The valid values next to `value` for a step rule the message states (a multiple of n,
    4k+1); empty when the message states none or the value is not a whole number."""
    number = _whole(value)
    if number is None:
        return []
    found = _MULTIPLE.search(message)
    if found is not None:
        step = int(found.group(1))
        if step <= 0 or number % step == 0:
            return []
        below = number // step * step
        return [v for v in (below, below + step) if v >= step]
    if _FOUR_K_PLUS_ONE in message:
        if (number - 1) % 4 == 0 and number >= 1:
            return []
        below = number - (number - 1) % 4
        return [v for v in (below, below + 4) if v >= 1]
    return []


def plain_field_message(message: str, value: object = None) -> str:
    """`message` (a pydantic error's text) without library prefixes, in genvisor's words, with
    the nearest valid values when the rule is a step."""
    text = message.strip()
    for prefix in _PREFIXES:
        if text.startswith(prefix):
            text = text[len(prefix) :]
    for old, new in _REWRITES:
        if text.startswith(old):
            text = new + text[len(old) :]
            break
    near = nearest_valid(text, value)
    if near and "nearest" not in text:
        text += f" (nearest: {' or '.join(str(v) for v in near)})"
    return text
