"""The embedded tiny-wan model, built through `genvisor models make-tiny`: a real,
deterministic, small Wan pipeline. Built in a subprocess so this test process never imports
torch (other tests check that the control side stays torch-free)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow


def make_tiny(*args: str, home: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "supervisor.cli.main", "models", "make-tiny", "--json", *args]
    env = {**os.environ, "GENVISOR_HOME": str(home)}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _file_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_builds_byte_identical_files(tmp_path: Path) -> None:
    first = make_tiny("--out", str(tmp_path / "a"), home=tmp_path)
    second = make_tiny("--out", str(tmp_path / "b"), home=tmp_path)
    hashes = _file_hashes(Path(first["path"]))
    assert hashes == _file_hashes(Path(second["path"]))
    assert first["sha256"] == second["sha256"]
    # Real safetensors weights for each model component, and no pickle files.
    weights = {name.split("/")[0] for name in hashes if name.endswith(".safetensors")}
    assert weights == {"transformer", "vae", "text_encoder"}
    assert not any(name.endswith((".bin", ".pt", ".pkl")) for name in hashes)
    index = json.loads((Path(first["path"]) / "model_index.json").read_text())
    assert index["_class_name"] == "WanPipeline"
    assert index["transformer"] == ["diffusers", "WanTransformer3DModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKLWan"]
    assert index["text_encoder"][1] == "UMT5EncoderModel"
    # "About 300 KB": a tiny model stays well under a megabyte.
    assert 50_000 < first["size_bytes"] < 1_000_000


def test_default_store_if_missing_and_other_seed(tmp_path: Path) -> None:
    base = make_tiny("--if-missing", home=tmp_path)
    assert Path(base["path"]) == tmp_path / "models" / "tiny-wan"
    assert base["built"] is True
    kept = make_tiny("--if-missing", "--seed", "1", home=tmp_path)
    assert kept["built"] is False
    assert kept["sha256"] == base["sha256"]
    other = make_tiny("--seed", "1", home=tmp_path)
    assert other["sha256"] != base["sha256"]
    # The build is staged and renamed: nothing but the model is left in the store.
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["tiny-wan"]
