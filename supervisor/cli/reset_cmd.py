"""`genvisor reset [--device D]`: bring a halted supervisor, or one halted device, back (an
operator's decision)."""

from __future__ import annotations

import argparse
import urllib.parse

from supervisor.cli.api_error_output import print_api_error
from supervisor.cli.server_client import add_url_argument, request_json

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "reset", help="reset a halted supervisor: restart its failed children with fresh budgets"
    )
    p.add_argument(
        "--device",
        help="with a devices list: bring back only this device's halted worker (e.g. cpu:1)",
    )
    add_url_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    path = "/v1/supervisor/reset"
    if args.device:
        path += "?" + urllib.parse.urlencode({"device": args.device})
    code, body = request_json(args, "POST", path, timeout=30.0)
    if code != 200:
        print_api_error(code, body)
        return 1
    if args.device:
        print(f"{args.device}: its worker is starting again (the supervisor is {body['state']})")
    else:
        print(f"supervisor reset: now {body['state']}")
    return 0
