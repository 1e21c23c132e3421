"""`genvisor models list|pull|verify|repair`, acting on the local model store directly.

`add_store_commands(actions)` adds them to the `models` sub-parsers. The store modules are
imported inside each action, so `genvisor --help` stays light.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeAlias

from supervisor.cli.server_client import request_json
from supervisor.core.exceptions import HomeInUse
from supervisor.core.home_lock import HomeLock
from supervisor.core.settings import CONFIG_DIR, Settings, load_settings

__all__ = ["add_store_commands", "holding_home", "owning_home"]

ActionParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
Action: TypeAlias = Callable[[argparse.Namespace], int]


def add_store_commands(actions: ActionParsers) -> None:
    p = actions.add_parser("list", help="registered models and their availability")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run_list)
    p = actions.add_parser("pull", help="download a model into the Hugging Face cache")
    p.add_argument("name")
    p.set_defaults(func=owning_home(_run_pull))
    p = actions.add_parser("verify", help="check sizes, safetensors headers (--deep: sha256)")
    p.add_argument("name")
    p.add_argument("--deep", action="store_true")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_run_verify)
    p = actions.add_parser("repair", help="quarantine bad files and fetch (or rebuild) them")
    p.add_argument("name")
    p.set_defaults(func=owning_home(_run_repair))


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(Path(args.config) if getattr(args, "config", None) else None)


def owning_home(action: Action) -> Action:
    """`action` holding the data folder's lock: a command that writes the model store never
    runs beside a server on the same folder. When a server owns the folder, the same work goes
    through it (`POST /v1/models/NAME/pull|repair?wait=true`): one writer either way."""

    def locked(args: argparse.Namespace) -> int:
        home = _settings(args).home
        try:
            lock = HomeLock(home)
            lock.acquire()
        except HomeInUse as exc:
            if exc.url is None:
                raise
            return _through_server(args, exc.url)
        try:
            return action(args)
        finally:
            lock.release()

    return locked


def _through_server(args: argparse.Namespace, url: str) -> int:
    """`models pull|repair NAME` done by the server that owns the data folder."""
    verb = args.models_action
    if verb == "pull" and os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        # The person asked for offline mode; the server would download regardless.
        print(
            f"genvisor: [NET.OFFLINE] offline mode (HF_HUB_OFFLINE={os.environ['HF_HUB_OFFLINE']})"
            f": `models pull {args.name}` cannot download anything",
            file=sys.stderr,
        )
        return 1
    args.url = url
    code, body = request_json(
        args, "POST", f"/v1/models/{args.name}/{verb}", params={"wait": "true"}, timeout=3600.0
    )
    if code >= 400 or not body.get("ok", False):
        what = body.get("error_code") or body.get("code") or "MODEL.STORE"
        words = body.get("message") or body.get("title") or f"the server answered {code}"
        print(f"genvisor: [{what}] {args.name}: {words}", file=sys.stderr)
        return 1
    files = body.get("files") or []
    print(f"{args.name}: {verb} done by the server at {url} ({len(files)} files)")
    return 0


@contextmanager
def holding_home(home: Path) -> Iterator[None]:
    lock = HomeLock(home)
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _run_list(args: argparse.Namespace) -> int:
    from actors.models.availability import check_availability
    from actors.models.registry import load_registry
    from actors.models.store import ModelStore, default_cache_dir

    settings = _settings(args)
    store = ModelStore(settings.home, settings.hf_cache_dir or default_cache_dir())
    entries = load_registry(CONFIG_DIR, [settings.models_file]).entries()
    reports = [check_availability(e, store) for e in entries]
    modes = {e.name: ",".join(m.value for m in e.modes) for e in entries}
    if args.json:
        print(json.dumps([{**r.to_json(), "modes": modes[r.name].split(",")} for r in reports]))
        return 0
    for r in reports:
        size = f"{r.bytes_present}/{r.bytes_expected}" if r.bytes_expected else str(r.bytes_present)
        print(
            f"{r.name:<20} {modes[r.name]:<11} {r.state.value:<10} {size:>24} bytes  {r.path or ''}"
        )
    return 0


def _run_pull(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from actors.models.model_errors import ModelStoreError
    from actors.models.pull import DownloadProgress, HubAccess, pull_model
    from actors.models.registry import ModelSource, load_registry
    from actors.models.repair import repair_model
    from actors.models.store import ModelStore, default_cache_dir

    settings = _settings(args)
    store = ModelStore(settings.home, settings.hf_cache_dir or default_cache_dir())
    try:
        entry = load_registry(CONFIG_DIR, [settings.models_file]).get(args.name)
        access = HubAccess.from_settings(settings)
        if entry.source is ModelSource.LOCAL:
            result = repair_model(entry, store, access)
            print(f"{entry.name}: {'rebuilt' if result.rebuilt else 'already present'}")
            return 0
        columns = ("{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn())
        # Transient: a failed pull leaves its one error line, not a frozen bar, behind.
        with Progress(*columns, transient=True) as bar:
            task = bar.add_task(entry.name, total=None)

            def show(p: DownloadProgress) -> None:
                bar.update(task, completed=p.bytes, total=p.total, description=p.file)

            pulled = pull_model(entry, store, access, show)
        print(f"{entry.name}: {len(pulled.downloaded)} files fetched, at {pulled.path}")
        return 0
    except ModelStoreError as exc:
        print(f"genvisor: [{exc.code.value}] {exc}", file=sys.stderr)
        return 1


def _run_verify(args: argparse.Namespace) -> int:
    from actors.models.manifest import read_manifest
    from actors.models.model_errors import ModelStoreError
    from actors.models.registry import load_registry
    from actors.models.store import ModelStore, default_cache_dir
    from actors.models.verify import verify_model_dir

    settings = _settings(args)
    store = ModelStore(settings.home, settings.hf_cache_dir or default_cache_dir())
    try:
        entry = load_registry(CONFIG_DIR, [settings.models_file]).get(args.name)
    except ModelStoreError as exc:
        print(f"genvisor: [{exc.code.value}] {exc}", file=sys.stderr)
        return 2
    manifest = read_manifest(store.home, entry.name)
    report = verify_model_dir(store.model_dir(entry, manifest), manifest, deep=args.deep)
    if args.json:
        problems = [{"path": p.path, "kind": p.kind.value, "detail": p.detail}
                    for p in report.problems]  # fmt: skip
        print(json.dumps({"model": entry.name, "ok": report.ok, "deep": report.deep,
                          "has_manifest": report.has_manifest, "problems": problems}))  # fmt: skip
    else:
        for p in report.problems:
            print(f"{entry.name}: {p}")
        if report.ok:
            print(f"{entry.name}: ok ({report.checked_files} files)")
        else:
            print(f"Fix it with `genvisor models repair {entry.name}`")
    return 0 if report.ok else 1


def _run_repair(args: argparse.Namespace) -> int:
    from actors.models.model_errors import ModelStoreError
    from actors.models.pull import HubAccess
    from actors.models.registry import load_registry
    from actors.models.repair import repair_model
    from actors.models.store import ModelStore, default_cache_dir

    settings = _settings(args)
    store = ModelStore(settings.home, settings.hf_cache_dir or default_cache_dir())
    try:
        entry = load_registry(CONFIG_DIR, [settings.models_file]).get(args.name)
        result = repair_model(entry, store, HubAccess.from_settings(settings),
                              allow_downloads=settings.allow_downloads)  # fmt: skip
    except ModelStoreError as exc:
        print(f"genvisor: [{exc.code.value}] {exc}", file=sys.stderr)
        return 1
    if not result.repaired:
        print(f"{entry.name}: nothing to repair")
    else:
        print(
            f"{entry.name}: repaired {', '.join(result.repaired)}; bad files in {result.quarantine}"
        )
    return 0
