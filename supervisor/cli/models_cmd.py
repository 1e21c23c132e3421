"""`genvisor models ...`: the model store.

Each action is a sub-sub-command registered through `MODEL_ACTIONS` (name -> register
function); a later module adds list/pull/verify/repair by appending to that table.
`make-tiny` builds the embedded `tiny-wan` model; it imports torch, so the builder is imported
inside the action, never at module level (this module is part of the control process's CLI).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeAlias

from supervisor.cli.argument_types import whole_number
from supervisor.cli.models_store_cmds import add_store_commands, holding_home
from supervisor.core.settings import CONFIG_DIR, load_settings

__all__ = ["MODEL_ACTIONS", "register", "tiny_model_dir"]

ActionParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

TINY_MODEL_NAME = "tiny-wan"
# The shapes `make-tiny --variant` builds (actors/worker/tiny_variants.py, which needs torch).
TINY_VARIANTS = ("t2v", "i2v", "a14b", "a14b-i2v", "ti2v")


def tiny_model_dir(home: Path) -> Path:
    """Where the embedded model lives: `<GENVISOR_HOME>/models/tiny-wan`."""
    return home / "models" / TINY_MODEL_NAME


def _register_make_tiny(actions: ActionParsers) -> None:
    p = actions.add_parser(
        "make-tiny",
        help="build the embedded tiny-wan model (real Wan pipeline, tiny random weights)",
    )
    p.add_argument(
        "--variant",
        choices=list(TINY_VARIANTS),
        default="t2v",
        help="which Wan shape: t2v (tiny-wan, the default), i2v (Wan 2.1 image-to-video), "
        "a14b / a14b-i2v (Wan 2.2's two experts), ti2v (Wan 2.2 TI2V-5B)",
    )
    p.add_argument(
        "--out", type=Path, help="target directory (default: <home>/models/<the variant's model>)"
    )
    p.add_argument("--if-missing", action="store_true", help="do nothing when a build exists")
    p.add_argument("--seed", type=int, default=0, help="weights seed (same seed, same files)")
    p.add_argument(
        "--weights-mb",
        type=whole_number(1, unit="MB"),
        help="widen the transformer to about this many MB of weights (jobs stay fast; loading "
        "pays): for reproducing out-of-memory at load under a memory cap",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_run_make_tiny)


def _run_make_tiny(args: argparse.Namespace) -> int:
    config = Path(args.config) if args.config else None
    settings = load_settings(config)
    home = settings.home
    if args.weights_mb is not None and args.variant != "t2v":
        print("genvisor: --weights-mb widens tiny-wan (--variant t2v) only", file=sys.stderr)
        return 2
    out: Path = args.out or home / "models" / _variant_model(args.variant, settings.models_file)
    if not out.resolve().is_relative_to(home.resolve()):
        return _make_tiny(args, out)
    with holding_home(home):
        return _make_tiny(args, out)


def _variant_model(variant: str, models_file: Path | None) -> str:
    """The registered model a tiny variant is built for (its `tiny_variant` entry)."""
    from actors.models.registry import load_registry

    for entry in load_registry(CONFIG_DIR, [models_file]).entries():
        if entry.tiny_variant == variant and entry.local_path is not None:
            return Path(entry.local_path).name
    return TINY_MODEL_NAME if variant == "t2v" else f"tiny-wan-{variant}"


def _make_tiny(args: argparse.Namespace, out: Path) -> int:
    # Imported here: the builder needs torch, the rest of the CLI must not load it.
    from actors.worker.tiny_wan import (
        DEFAULT_FFN_DIM,
        FFN_BYTES_PER_UNIT,
        build_tiny_wan,
        is_complete,
    )

    ffn_dim = DEFAULT_FFN_DIM
    if args.weights_mb is not None:
        ffn_dim = max(DEFAULT_FFN_DIM, args.weights_mb * 1_000_000 // FFN_BYTES_PER_UNIT)
    existed = is_complete(out)
    started = time.perf_counter()
    if args.variant == "t2v":
        build = build_tiny_wan(out, seed=args.seed, overwrite=not args.if_missing, ffn_dim=ffn_dim)
    else:
        # Only the image shapes need transformers' CLIP classes. Without torchvision,
        # transformers 5 notes at their first import that it uses the PIL image processor:
        # the same processor for a tiny build, and a line a person would read as a problem.
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        from actors.worker.tiny_variants import TinyVariant, build_tiny_variant

        variant = TinyVariant(args.variant)
        build = build_tiny_variant(out, variant, seed=args.seed, overwrite=not args.if_missing)
    result = {
        "path": str(build.path),
        "size_bytes": build.size_bytes,
        "sha256": build.digest,
        "built": not (existed and args.if_missing),
        "seconds": round(time.perf_counter() - started, 3),
    }
    if args.json:
        print(json.dumps(result))
    else:
        verb = "built" if result["built"] else "already present"
        size = f"{build.size_bytes} bytes, sha256 {build.digest}"
        print(f"{build.path.name} {verb}: {build.path} ({size})")
    return 0


MODEL_ACTIONS: dict[str, Callable[[ActionParsers], None]] = {
    "make-tiny": _register_make_tiny,
    "store": add_store_commands,
}


def register(sub: ActionParsers) -> None:
    p = sub.add_parser("models", help="manage the model store")
    actions = p.add_subparsers(dest="models_action", metavar="ACTION", required=True)
    for add in MODEL_ACTIONS.values():
        add(actions)
