"""Shared fixtures of the model-store tests: the tiny-wan repo served by a loopback Hub."""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from hub_server import HubRepo, HubServer

from actors.models.registry import ModelEntry, load_registry
from actors.models.store import ModelStore

REPO_ID = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
MODEL = "Wan2.1-T2V-1.3B"
BIG = "extras/big.safetensors"
BIG_BYTES = 12 * 1024 * 1024  # > huggingface_hub's 10 MiB chunk, so a dropped GET resumes


def big_safetensors(n: int) -> bytes:
    header = json.dumps({"x": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}}).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + bytes(range(256)) * (n // 256)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from actors.worker.tiny_wan import build_tiny_wan

    return build_tiny_wan(tmp_path_factory.mktemp("tiny") / "tiny-wan").path


@pytest.fixture(scope="session")
def hub_session(tiny_dir: Path) -> Iterator[HubServer]:
    with HubServer(HubRepo(REPO_ID, tiny_dir, {BIG: big_safetensors(BIG_BYTES)})) as hub:
        yield hub


@pytest.fixture
def hub(hub_session: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HubServer:
    hub_session.reset()
    # No stored token of the machine may leak into these requests.
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return hub_session


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "home", tmp_path / "hf_cache")


@pytest.fixture
def entry() -> ModelEntry:
    return load_registry(Path(__file__).resolve().parents[1] / "config").get(MODEL)
