"""A job too large for the memory cap is refused by pre-flight at once, and `genvisor generate`
says it with its numbers: the estimate, what the cap leaves, and a size that could fit; no
advice about Wan's 14B variants for a tiny model, only what applies on a CPU."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.runtime_harness import make_home
from tests.server_process import GENVISOR, running_server, server_env

pytestmark = pytest.mark.slow


def _generate(home: Path, url: str, out: Path, *size: str) -> subprocess.CompletedProcess[str]:
    width, height, frames = size
    return subprocess.run(
        [GENVISOR, "generate", "a lighthouse", "--width", width, "--height", height,
         "--frames", frames, "--steps", "2", "--out", str(out)],
        env=server_env(home, GENVISOR_URL=url),
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip


def test_a_refusal_carries_its_numbers(tmp_path: Path, tiny_model: Path) -> None:
    home = make_home(tmp_path, tiny_model)
    with running_server(home, GENVISOR_DEVICE_MEMORY_LIMIT="2GiB") as server:
        # A first job loads the model: pre-flight then knows its weights and the worker's size.
        first = _generate(home, server.url, tmp_path / "a.mp4", "32", "32", "5")
        assert first.returncode == 0, first.stdout + first.stderr
        refused = _generate(home, server.url, tmp_path / "b.mp4", "1280", "1280", "81")
    words = refused.stdout + refused.stderr
    assert refused.returncode != 0
    assert "Traceback" not in words
    assert "[VRAM.EXHAUSTED]" in words
    assert "Refused before it ran" in words
    assert "needs about" in words  # the estimate
    assert "free, less a" in words  # what the cap leaves, and the reserve
    # The size pre-flight found fits (with every saving that keeps the video), and no frame
    # count that would not: even one frame of 1280x1280 needs more than the cap leaves.
    assert "pre-flight predicts that it fits" in words
    assert "(now 1280x1280)" in words
    assert "fewer frames" not in words
    assert "14B" not in words
    assert "GPU" not in words  # a CPU job: no GPU advice
    assert "device_memory_limit" in words
    assert "0/2 steps" not in words  # no empty progress bar for a job that never started
