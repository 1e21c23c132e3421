"""`genvisor explain TEXT`: paste an error (a whole traceback is fine) and learn what to do.

The text comes from the arguments or, without any, from stdin. `--json` prints the summary
{"category", "severity", "code", "recoverable", "title", "message", "suggestions"}; `--lines`
treats each input line as its own error and prints one such JSON object per line (log files).
"""

from __future__ import annotations

import argparse
import json
import sys

from supervisor.errors.categorizer import default_categorizer
from supervisor.errors.cue_scores import CUE_RULE_PREFIX
from supervisor.errors.traceback_text import report_from_text
from supervisor.errors.user_error import UserError, explain
from supervisor.errors.word_model import WORD_RULE_PREFIX

__all__ = ["register", "run", "summary"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("explain", help="explain an error message or traceback in plain words")
    p.add_argument("text", nargs="*", help="the error text (default: read stdin)")
    p.add_argument("--json", action="store_true", help="print a JSON summary")
    p.add_argument(
        "--lines", action="store_true", help="one error per input line, one JSON line each"
    )
    p.add_argument("--device", help="the device the job ran on (cpu, cuda:0, ...)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    text = " ".join(args.text) if args.text else sys.stdin.read()
    if args.lines:
        for line in text.splitlines():
            if line.strip():
                print(json.dumps(summary(line, args.device), ensure_ascii=False))
        return 0
    if not text.strip():
        print("genvisor: no error text given (pass it as an argument or on stdin)", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary(text, args.device), ensure_ascii=False))
        return 0
    report = report_from_text(text, device=args.device)
    verdict = default_categorizer().categorize(report)
    _print_human(explain(report, verdict))
    guessed = _guessed_from(verdict.rule)
    if guessed:
        # Invariant: say only what the text supports. Cues and the word model read words that
        # lean one way (supervisor/errors/cue_scores.py, word_model.py), not a known error:
        # the person is told so.
        print(
            f"\n(No rule knows this exact error: judged from the words it uses ({guessed}); "
            "the advice may not fit.)"
        )
    return 0


def _guessed_from(rule: str) -> str:
    """The words or cues a guessed verdict rests on, for people; "" for a known error."""
    for prefix, kind in ((CUE_RULE_PREFIX, "cues"), (WORD_RULE_PREFIX, "words")):
        if rule.startswith(prefix):
            return f"{kind}: " + rule.removeprefix(prefix).replace("+", ", ")
    return ""


def summary(text: str, device: str | None = None) -> dict[str, object]:
    report = report_from_text(text, device=device)
    verdict = default_categorizer().categorize(report)
    user = explain(report, verdict)
    return {
        **verdict.as_summary(),
        "title": user.title,
        "message": user.message,
        "suggestions": user.suggestions,
    }


def _print_human(user: UserError) -> None:
    print(f"{user.title}  [{user.code} · {user.category} · {user.severity}]")
    print(user.message)
    if user.suggestions:
        print("\nWhat you can do:")
        for number, suggestion in enumerate(user.suggestions, start=1):
            print(f"  {number}. {suggestion}")
