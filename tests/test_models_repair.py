from __future__ import annotations

import os
import shutil
from pathlib import Path

import anyio
import pytest
from hub_server import HubServer
from models_fixtures import MODEL, entry, hub, hub_session, store, tiny_dir

from actors.model_loader import (
    ModelLoader,
    Operation,
    PullModel,
    RepairModel,
    ResolvedModel,
    ResolveModel,
    VerifyModel,
)
from actors.models.availability import StoreState, check_availability
from actors.models.manifest import read_manifest
from actors.models.pull import HubAccess, pull_model
from actors.models.registry import ModelEntry, load_registry
from actors.models.repair import repair_model
from actors.models.store import ModelStore
from actors.models.verify import ProblemKind, verify_model_dir
from supervisor.bus.events import EventData, ModelDownloadProgress, ModelRepaired
from supervisor.core.settings import Settings

__all__ = ["entry", "hub", "hub_session", "store", "tiny_dir"]

TEXT = "text_encoder/model.safetensors"
VAE = "vae/diffusion_pytorch_model.safetensors"


def _damage(root: Path) -> None:
    text = (root / TEXT).resolve()
    os.truncate(text, text.stat().st_size - 100)
    vae = (root / VAE).resolve()
    data = bytearray(vae.read_bytes())
    data[-10] ^= 0x01  # in the tensor data: the header still parses
    vae.write_bytes(bytes(data))


def test_verify_finds_truncation_and_deep_finds_bit_flip_then_repair_fetches_only_them(
    hub: HubServer, store: ModelStore, entry: ModelEntry
) -> None:
    access = HubAccess(endpoint=hub.endpoint, backoff_base=0.01)
    root = pull_model(entry, store, access).path
    _damage(root)
    manifest = read_manifest(store.home, entry.name)

    quick = verify_model_dir(root, manifest, deep=False)
    assert [(p.path, p.kind) for p in quick.problems] == [(TEXT, ProblemKind.SHORT)]
    assert check_availability(entry, store).state is StoreState.PARTIAL
    deep = verify_model_dir(root, manifest, deep=True)
    assert {(p.path, p.kind) for p in deep.problems} == {
        (TEXT, ProblemKind.SHORT),
        (VAE, ProblemKind.HASH_MISMATCH),
    }

    hub.reset()
    result = repair_model(entry, store, access)
    assert sorted(hub.gets()) == sorted([TEXT, VAE])
    assert result.quarantine is not None
    assert (result.quarantine / VAE).is_file()
    assert verify_model_dir(root, manifest, deep=True).ok


def test_tiny_wan_repair_rebuilds_the_same_bytes(tiny_dir: Path, tmp_path: Path) -> None:
    from actors.worker.tiny_wan import directory_digest

    entry = load_registry(Path(__file__).resolve().parents[1] / "config").get("tiny-wan")
    store = ModelStore(tmp_path / "home", tmp_path / "hf")
    local = entry.local_dir(store.home)
    shutil.copytree(tiny_dir, local)
    before = directory_digest(local)
    damaged = local / TEXT
    os.truncate(damaged, damaged.stat().st_size // 2)
    assert check_availability(entry, store).state is StoreState.PARTIAL

    result = repair_model(entry, store, HubAccess())
    assert result.rebuilt
    assert result.quarantine is not None
    assert directory_digest(local) == before
    assert verify_model_dir(local, read_manifest(store.home, entry.name), deep=True).ok


@pytest.mark.anyio
async def test_actor_pulls_verifies_repairs_and_resolves(hub: HubServer, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", hf_endpoint=hub.endpoint,
                        hf_cache_dir=tmp_path / "hf", download_backoff_base=0.01)  # fmt: skip
    events: list[EventData] = []
    loader = ModelLoader(settings, publish=events.append)
    async with anyio.create_task_group() as tg:
        await tg.start(loader.run)
        with anyio.fail_after(60):
            pulled = await (await loader.ask(PullModel(MODEL), Operation)).result()
            assert pulled.ok, pulled.message
            resolved = await loader.ask(ResolveModel(MODEL), ResolvedModel)
            path = resolved.path
            assert (path / "model_index.json").is_file()
            _damage(path)
            verified = await (await loader.ask(VerifyModel(MODEL, deep=True), Operation)).result()
            assert not verified.ok
            assert sorted(verified.files) == sorted([TEXT, VAE])
            repaired = await (await loader.ask(RepairModel(MODEL), Operation)).result()
            assert repaired.ok
            assert sorted(repaired.files) == sorted([TEXT, VAE])
        assert loader.describe()["models"][MODEL]["state"] == "present"
        loader.stop()
    assert any(isinstance(e, ModelDownloadProgress) for e in events)
    assert any(isinstance(e, ModelRepaired) for e in events)


def test_pulled_model_loads_and_generates(
    hub: HubServer, store: ModelStore, entry: ModelEntry
) -> None:
    import torch
    from diffusers import WanPipeline

    root = pull_model(entry, store, HubAccess(endpoint=hub.endpoint)).path
    pipe = WanPipeline.from_pretrained(root)
    out = pipe(
        prompt="a red fox",
        width=32,
        height=32,
        num_frames=5,
        num_inference_steps=2,
        guidance_scale=1.0,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    )
    frames = out.frames[0]
    assert frames.shape == (5, 32, 32, 3)
    assert float(frames.std()) > 0
