"""`genvisor docs`: print or refresh the generated reference sections of the README."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    p = sub.add_parser("docs", help="print the reference tables (error codes, ladder, settings)")
    p.add_argument("section", nargs="?", choices=["codes", "ladder", "settings"])
    p.add_argument("--write", type=Path, metavar="FILE", help="refresh the blocks in FILE")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from supervisor.api.reference_docs import SECTIONS, write

    if args.write is not None:
        changed = write(args.write)
        print(f"{args.write}: {'updated' if changed else 'already current'}")
        return 0
    for name in [args.section] if args.section else list(SECTIONS):
        print(SECTIONS[name]())
        print()
    return 0
