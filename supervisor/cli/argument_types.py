"""argparse `type=` converters whose errors name what is allowed (argparse prefixes the option)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["HelpWithDefaults", "whole_number"]


class HelpWithDefaults(argparse.HelpFormatter):
    """`--help` shows each option's default, unless its help already says it (or it has none:
    None, a flag's False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            not action.option_strings
            or "default" in text.lower()
            or default is None
            or default is False
            or default is argparse.SUPPRESS
            or default == []
            or text == argparse.SUPPRESS
        ):
            return action.help
        shown = str(default).replace("%", "%%")
        return f"{text} (default: {shown})"


def whole_number(minimum: int, unit: str = "") -> Callable[[str], int]:
    """A converter for a whole number of at least `minimum` (of `unit`, when one is given):
    `--limit -1` → "must be a whole number of at least 0, got '-1'"."""
    what = f"a whole number{f' of {unit}' if unit else ''} of at least {minimum}"

    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    return convert
