"""`genvisor reset`: bring a halted supervisor back (an operator's decision)."""

from __future__ import annotations

import argparse

from supervisor.cli.api_error_output import print_api_error
from supervisor.cli.server_client import add_url_argument, request_json

__all__ = ["register", "run"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "reset", help="reset a halted supervisor: restart its failed children with fresh budgets"
    )
    add_url_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    code, body = request_json(args, "POST", "/v1/supervisor/reset", timeout=30.0)
    if code != 200:
        print_api_error(code, body)
        return 1
    print(f"supervisor reset: now {body['state']}")
    return 0
