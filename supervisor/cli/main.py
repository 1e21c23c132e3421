"""`genvisor` command line. Each sub-command lives in its own module that exposes
`register(subparsers)`; the module list below is the whole CLI."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from supervisor.cli.argument_types import HelpWithDefaults
from supervisor.cli.failure_output import report_failure
from supervisor.core.exceptions import ConfigError, HomeInUse, PortInUse, ServerUnavailable

__all__ = ["main"]

COMMAND_MODULES: tuple[str, ...] = (
    "supervisor.cli.docs_cmd",
    "supervisor.cli.events_cmd",
    "supervisor.cli.explain_cmd",
    "supervisor.cli.generate_cmd",
    "supervisor.cli.jobs_cmd",
    "supervisor.cli.models_cmd",
    "supervisor.cli.reset_cmd",
    "supervisor.cli.schema_cmd",
    "supervisor.cli.serve_cmd",
    "supervisor.cli.state_cmd",
)


class _OneLineErrors(argparse.ArgumentParser):
    """A misuse is one line (what is wrong, where help is), not the usage block; sub-parsers
    inherit the class."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpWithDefaults)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


_CONFIG_HELP = "a TOML settings file (overrides config/default.toml)"
_DEBUG_HELP = "on an unexpected error, print its traceback too"


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineErrors(
        prog="genvisor",
        description="Fault-tolerant backend for local text-to-video generation.",
    )
    parser.add_argument("--version", action="version", version=f"genvisor {_version()}")
    parser.add_argument("--config", help=_CONFIG_HELP)
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    _accept_global_options(parser)
    return parser


def _accept_global_options(parser: argparse.ArgumentParser) -> None:
    """`--config` and `--debug` after the command as well (`genvisor serve --config x`): every
    sub-command, at any depth, takes them; SUPPRESS keeps the value given before it."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        for child in action.choices.values():
            known = {o for a in child._actions for o in a.option_strings}
            if "--config" not in known:
                child.add_argument("--config", default=argparse.SUPPRESS, help=_CONFIG_HELP)
            if "--debug" not in known:
                child.add_argument(
                    "--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP
                )
            _accept_global_options(child)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("genvisor")
    except PackageNotFoundError:
        return "(not installed)"


def _warn_unknown_environment() -> None:
    from supervisor.core.settings import unknown_environment

    for warning in unknown_environment():
        print(f"genvisor: warning: {warning}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "serve":  # the server logs them as it starts
        _warn_unknown_environment()
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"genvisor: bad configuration: {exc}", file=sys.stderr)
        return 2
    except ServerUnavailable as exc:
        print(f"genvisor: {exc}. Start it with `genvisor serve`.", file=sys.stderr)
        return 1
    except (HomeInUse, PortInUse) as exc:
        print(f"genvisor: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`genvisor state --graph | head`): not an error of genvisor's.
        # Stdout is pointed at /dev/null so that the interpreter's final flush stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # noqa: BLE001 - the one place every other failure is explained
        return report_failure(exc, debug=getattr(args, "debug", False))
    return code


if __name__ == "__main__":
    sys.exit(main())
