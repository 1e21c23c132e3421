"""`genvisor schema [--out FILE]`: the JSON Schema of every event of the bus."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from supervisor.bus.schema import event_json_schema

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "schema",
        help="write the JSON Schema of all events",
        description="Write the JSON Schema (draft 2020-12) of the events on the bus and the "
        "WebSocket: one envelope {seq, ts, type, data} per event type.",
    )
    parser.add_argument("--out", type=Path, help="write to this file instead of stdout")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    text = json.dumps(event_json_schema(), indent=2, sort_keys=True) + "\n"
    out: Path | None = args.out
    if out is None:
        sys.stdout.write(text)
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(f"wrote the event schema to {out}", file=sys.stderr)
    return 0
