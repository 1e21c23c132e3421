"""`ray_model_cache = "node"`: each Ray node keeps its own copy of the models.

The server resolves a job's model on its own host and sends the worker a `Load` with that
host's path. On a node with its own cache the actor hosting the worker (`ray_host`) hands the
`Load` to `NodeModels.localize` first, which answers the same model's path on this node, after
making it available here the way the server's model loader does on its host:

- a Hub model: genvisor's own pull (`actors.models.pull`: safetensors only, hashes checked,
  resumable, retried) into this node's Hugging Face cache; a partial or damaged copy fetches the
  files it lacks;
- a tiny build (`make-tiny --variant`): rebuilt here in a child process (same seed, same bytes);
- any other local folder: the path as sent, which must then be on a shared file system.

The node's own data folder (manifests, tiny builds) is its `GENVISOR_HOME`, else the default;
its cache is `HF_HUB_CACHE`/`HF_HOME`, else huggingface_hub's default.

Invariant: nothing here imports torch; a rebuild runs in its own process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from actors.models.availability import StoreState, check_availability
from actors.models.pull import HubAccess, pull_model
from actors.models.registry import ModelEntry, ModelSource
from actors.models.store import ModelStore, default_cache_dir

__all__ = ["NodeModels"]

_REBUILD_TIMEOUT_S = 600.0


@dataclass(frozen=True, slots=True)
class NodeModels:
    """The registry entries and the Hub access of the server, carried to every node."""

    entries: tuple[ModelEntry, ...]
    access: HubAccess

    def localize(self, model_name: str, sent_path: str) -> str:
        """This node's path of `model_name`, made available here first; raises what the pull
        or the rebuild raised (the worker's `Load` fails with it, as on the server's host)."""
        entry = next((e for e in self.entries if e.name == model_name), None)
        if entry is None:
            return sent_path
        home = Path(os.environ.get("GENVISOR_HOME") or Path.home() / ".genvisor").expanduser()
        store = ModelStore(home, default_cache_dir())
        if entry.source is ModelSource.HUB:
            return str(self._pulled(entry, store))
        if entry.tiny_variant is not None:
            return str(self._rebuilt(entry, store, entry.tiny_variant))
        return sent_path

    def _pulled(self, entry: ModelEntry, store: ModelStore) -> Path:
        report = check_availability(entry, store)
        if report.state is StoreState.PRESENT and report.path is not None:
            return report.path
        only = report.bad_files if report.state is StoreState.CORRUPTED else None
        return pull_model(entry, store, self.access, only=only or None).path

    def _rebuilt(self, entry: ModelEntry, store: ModelStore, variant: str) -> Path:
        path = entry.local_dir(store.home)
        if not (path / "model_index.json").is_file():
            subprocess.run(
                [sys.executable, "-m", "actors.worker.tiny_rebuild", str(path), variant],
                check=True,
                capture_output=True,
                timeout=_REBUILD_TIMEOUT_S,
            )
        return path
