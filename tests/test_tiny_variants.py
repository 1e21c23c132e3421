"""Every Wan shape on its real tiny build, in a real worker process: image-to-video, first-last
frame, two experts (Wan 2.2 A14B) and the TI2V-5B layout (Wan 2.2 VAE, expanded timesteps)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from actors.models.registry import load_registry
from actors.worker.protocol import (
    Done,
    Fit,
    Generate,
    GenerationParams,
    Load,
    Loaded,
    Progress,
    WorkerMessage,
)
from actors.worker.spawn import WorkerHandle, WorkerLaunch, spawn_worker
from supervisor.core.settings import CONFIG_DIR
from supervisor.core.stages import Stage
from tests.test_worker_generation import read_frames, read_json, until_terminal

pytestmark = pytest.mark.slow

VARIANTS = ("i2v", "a14b", "a14b-i2v", "ti2v")
NAMES = {
    "i2v": "tiny-wan-i2v",
    "a14b": "tiny-wan-a14b",
    "a14b-i2v": "tiny-wan-a14b-i2v",
    "ti2v": "tiny-wan-ti2v",
}


def _params(seed: int = 3, width: int = 32, height: int = 32) -> GenerationParams:
    return GenerationParams(
        prompt="a lighthouse", width=width, height=height, num_frames=5, steps=2, seed=seed
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each variant built once, by the same child process repair uses (no torch here)."""
    root = tmp_path_factory.mktemp("variants")
    out = {}
    for variant in VARIANTS:
        cmd = [sys.executable, "-m", "actors.worker.tiny_rebuild", str(root / variant), variant]
        subprocess.run(cmd, capture_output=True, timeout=120, check=True)
        out[variant] = root / variant
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = {}
    for name, size in (("red", (48, 32)), ("blue", (32, 48)), ("noise", (40, 40))):
        if name == "noise":
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            image = Image.fromarray(pixels)
        else:
            image = Image.new("RGB", size, (220, 20, 20) if name == "red" else (20, 20, 220))
        paths[name] = root / f"{name}.png"
        image.save(paths[name])
    return paths


@asynccontextmanager
async def _worker(tmp_path: Path, model: Path, variant: str) -> AsyncIterator[WorkerHandle]:
    entry = load_registry(CONFIG_DIR).get(NAMES[variant])
    handle = await spawn_worker(WorkerLaunch(log_path=tmp_path / "worker.log"))
    try:
        load = Load(
            model_path=str(model), model_name=entry.name, pipeline_class=entry.pipeline_class
        )
        await handle.send(load)
        seen = await until_terminal(handle)
        assert isinstance(seen[-1], Loaded), seen[-1]
        yield handle
    finally:
        await handle.shutdown(grace_s=5.0)


async def _generate(
    handle: WorkerHandle, out: Path, job: str, params: GenerationParams | None = None, **inputs: Any
) -> list[WorkerMessage]:
    request = Generate(job_id=job, params=params or _params(), output_dir=str(out), **inputs)
    await handle.send(request)
    seen = await until_terminal(handle)
    assert isinstance(seen[-1], Done), seen[-1]
    return seen


def _video(seen: list[WorkerMessage], frames: int = 5) -> np.ndarray:
    done = seen[-1]
    assert isinstance(done, Done)
    decoded = read_frames(Path(done.output_path))
    assert len(decoded) == frames
    return np.stack(decoded).astype(np.int16)


def _sidecar(seen: list[WorkerMessage]) -> dict[str, Any]:
    done = seen[-1]
    assert isinstance(done, Done)
    return read_json(done.sidecar_path)


def _differs(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(np.abs(a - b).max() > 0)


@pytest.mark.anyio
async def test_image_to_video_uses_its_image_and_records_the_input(
    tmp_path: Path, built: dict[str, Path], images: dict[str, Path]
) -> None:
    async with _worker(tmp_path, built["i2v"], "i2v") as worker:
        red = await _generate(worker, tmp_path, "red", image_path=str(images["red"]))
        noise = await _generate(worker, tmp_path, "noise", image_path=str(images["noise"]))
    # Same seed and prompt: only the first frame differs, so the video must.
    assert _differs(_video(red), _video(noise))
    sidecar = _sidecar(red)
    assert sidecar["inputs"] == {"image": f"sha256:{images['red'].stem}"}
    assert sidecar["fit"] == "crop"


@pytest.mark.anyio
async def test_first_last_frame_on_the_two_expert_image_model(
    tmp_path: Path, built: dict[str, Path], images: dict[str, Path]
) -> None:
    async with _worker(tmp_path, built["a14b-i2v"], "a14b-i2v") as worker:
        first = await _generate(worker, tmp_path, "first", image_path=str(images["red"]))
        both = await _generate(
            worker,
            tmp_path,
            "both",
            image_path=str(images["red"]),
            last_image_path=str(images["blue"]),
            fit=Fit.PAD,
        )
    assert _differs(_video(first), _video(both))
    sidecar = _sidecar(both)
    assert set(sidecar["inputs"]) == {"image", "last_image"}
    assert sidecar["fit"] == "pad"
    steps = [m.expert for m in both if isinstance(m, Progress) and m.stage is Stage.DENOISE]
    assert steps[-2:] == [1, 2]


@pytest.mark.anyio
async def test_two_experts_both_run_across_the_boundary(
    tmp_path: Path, built: dict[str, Path]
) -> None:
    async with _worker(tmp_path, built["a14b"], "a14b") as worker:
        seen = await _generate(worker, tmp_path, "experts", params=_params(width=48, height=32))
    experts = [m.expert for m in seen if isinstance(m, Progress) and m.step]
    # 2 steps, boundary at 0.875 of 1000 timesteps: step 1 (t=999) high noise, step 2 low noise.
    assert experts == [1, 2]
    assert _video(seen).shape[1:3] == (32, 48)


@pytest.mark.anyio
async def test_ti2v_serves_text_and_image_from_one_load(
    tmp_path: Path, built: dict[str, Path], images: dict[str, Path]
) -> None:
    async with _worker(tmp_path, built["ti2v"], "ti2v") as worker:
        text = await _generate(worker, tmp_path, "text", params=_params(width=64, height=32))
        image = await _generate(
            worker,
            tmp_path,
            "image",
            params=_params(width=64, height=32),
            image_path=str(images["noise"]),
            fit=Fit.STRETCH,
        )
        loaded = [m for m in image if isinstance(m, Loaded)]
    assert _video(text).shape[1:3] == (32, 64)
    assert _differs(_video(text), _video(image))
    assert not loaded  # the image form came from the loaded components, not a second load
    assert _sidecar(image)["fit"] == "stretch"


def test_every_tiny_variant_rebuilds_byte_for_byte(tmp_path: Path, built: dict[str, Path]) -> None:
    from actors.worker.tiny_wan import directory_digest

    for variant in ("a14b-i2v", "ti2v"):
        again = tmp_path / variant
        cmd = [sys.executable, "-m", "actors.worker.tiny_rebuild", str(again), variant]
        subprocess.run(cmd, capture_output=True, timeout=120, check=True)
        assert directory_digest(again) == directory_digest(built[variant])
