"""The last word of a command that failed unexpectedly: the error categorized by genvisor's own
categorizer and said in a few plain lines, never a traceback (unless asked for).

    genvisor: The folder is read-only [FS.READ_ONLY]
      /data/genvisor is on a read-only file system.
      (OSError: [Errno 30] Read-only file system: '/data/genvisor/genvisor.lock')
      - Point GENVISOR_HOME and HF_HOME to a writable folder.

`--debug` (or GENVISOR_DEBUG=1) adds the traceback after those lines.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import TextIO

from supervisor.errors.categories import Category
from supervisor.errors.report import ErrorReport
from supervisor.errors.user_error import UserError, explain

__all__ = ["EXIT_CONFIG", "EXIT_FAILED", "debug_enabled", "failure_lines", "report_failure"]

EXIT_FAILED = 1
EXIT_CONFIG = 2
# Suggestions shown on a terminal; the rest are in `genvisor explain`.
_SHOWN_SUGGESTIONS = 3
_OWN_PREFIXES = ("supervisor.", "actors.")


def debug_enabled(flag: bool = False) -> bool:
    return flag or os.environ.get("GENVISOR_DEBUG", "").strip().lower() in ("1", "true", "yes")


def failure_lines(exc: BaseException) -> list[str]:
    """What a person reads about `exc`: title and code, what happened, what to do."""
    return _lines(explain(ErrorReport.from_exception(exc)), exc)


def report_failure(exc: BaseException, *, debug: bool = False, file: TextIO | None = None) -> int:
    """Print `exc` for a person; return the exit status (2 for configuration, else 1)."""
    out = file or sys.stderr
    user = explain(ErrorReport.from_exception(exc))
    for line in _lines(user, exc):
        print(line, file=out)
    if debug_enabled(debug):
        print("".join(traceback.format_exception(exc)).rstrip(), file=out)
    else:
        print("  (run with --debug or GENVISOR_DEBUG=1 for the traceback)", file=out)
    return EXIT_CONFIG if user.category is Category.CONFIGURATION else EXIT_FAILED


def _lines(user: UserError, exc: BaseException) -> list[str]:
    lines = [f"genvisor: {user.title} [{user.code}]"]
    own = user.technical.type.startswith(_OWN_PREFIXES)
    # genvisor's own exceptions say exactly what happened; anything else gets the catalog's
    # sentence and, below it, the library's own words (the path, the number) in one line.
    lines.append(f"  {_first_line(str(exc)) if own and str(exc) else user.message}")
    if not own:
        short_type = user.technical.type.rpartition(".")[2] or "error"
        lines.append(f"  ({short_type}: {_first_line(user.technical.message)})"[:400])
    lines += [f"  - {s}" for s in user.suggestions[:_SHOWN_SUGGESTIONS]]
    return lines


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""
