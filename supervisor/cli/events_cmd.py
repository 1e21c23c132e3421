"""`genvisor events`: tail the running server's event bus as JSON lines (one event a line).

Events are the bus envelope ``{seq, ts, type, data}`` exactly as the server sent it. ``--type``
takes shell-style patterns (``job.*``) matched against the event type; a dropped stream is
resumed from the last seq printed, so a tail neither loses nor repeats events.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import sys

from supervisor.cli.argument_types import whole_number
from supervisor.cli.event_stream import EventFollower
from supervisor.cli.server_client import add_url_argument

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("events", help="tail the running server's events as JSON lines")
    p.add_argument(
        "--since",
        type=whole_number(0),
        default=None,
        help="replay the journal from after this seq (0: everything kept); default: only new",
    )
    p.add_argument(
        "--type",
        dest="types",
        action="append",
        metavar="PATTERN",
        help="only events whose type matches (fnmatch, e.g. 'job.*'); may be repeated",
    )
    p.add_argument("--limit", type=whole_number(0), help="stop after printing this many events")
    add_url_argument(p)
    p.set_defaults(func=run)


def _wanted(event_type: str, patterns: list[str] | None) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(event_type, p) for p in patterns)


def run(args: argparse.Namespace) -> int:
    if args.limit == 0:
        return 0

    def notice(since: int | None, why: str) -> None:
        print(f"genvisor: event stream {why}; resuming after seq {since}", file=sys.stderr)

    follower = EventFollower(args, since=args.since, on_reconnect=notice)
    printed = 0
    try:
        for event in follower:
            if not _wanted(str(event.get("type")), args.types):
                continue
            print(json.dumps(event, separators=(",", ":")), flush=True)
            printed += 1
            if args.limit is not None and printed >= args.limit:
                break
    except KeyboardInterrupt:
        # Ctrl-C is how a person ends a tail: a clean stop, not an error.
        follower.close()
        return 0
    except BrokenPipeError:
        # `genvisor events | head`: the reader left; nothing more to say.
        follower.close()
        return 0
    return 0
