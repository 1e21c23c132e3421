"""The built wheel stands alone: installed into a fresh environment and run from a folder
outside the checkout, it finds its config as package data, builds tiny-wan, serves and runs
one job to the end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.server_process import free_port, read_events_until, uvicorn_process

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SKIP = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".genvisor")


def _run(*cmd: str | Path, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=300, check=True, **kw
    )  # type: ignore[call-overload, no-any-return]


def test_the_wheel_runs_a_job_from_outside_the_checkout(tmp_path: Path) -> None:
    # Built from a copy: setuptools keeps a build/ folder in the source tree, and files it
    # holds from an earlier build would ride along into the wheel.
    source = tmp_path / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(*SKIP))
    dist = tmp_path / "dist"
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", dist, source)  # fmt: skip
    (wheel,) = dist.glob("genvisor-*.whl")

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    _run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel)
    # The dependencies come from this environment's site-packages through a .pth line; its
    # own editable hook for genvisor is a .pth there too, and Python reads .pth files only in
    # the running environment's site dirs, so the checkout stays out of sight.
    purelib = Path(
        _run(
            python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"
        ).stdout.strip()
    )
    (purelib / "genvisor_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENVISOR_", "PYTHON"))}
    env.update(GENVISOR_HOME=str(home), GENVISOR_LOG_FORMAT="json")
    files = "import supervisor, actors; print(supervisor.__file__, actors.__file__)"
    where = _run(python, "-c", files, cwd=outside, env=env).stdout.split()
    assert all(Path(p).is_relative_to(venv) for p in where), where
    shipped = (
        "from supervisor.core.settings import SHIPPED_CONFIG_DIR as d;"
        "print(d, sorted(p.name for p in d.iterdir()))"
    )
    config = _run(python, "-c", shipped, cwd=outside, env=env).stdout
    assert config.startswith(str(venv)), config
    assert "models.toml" in config

    genvisor = venv / "bin" / "genvisor"
    built = json.loads(_run(genvisor, "models", "make-tiny", "--json", cwd=outside, env=env).stdout)
    assert Path(built["path"]) == home / "models" / "tiny-wan"

    port = free_port()
    with uvicorn_process([str(genvisor), "serve", "--port", str(port)], env=env, cwd=outside):
        import httpx

        job = httpx.post(
            f"http://127.0.0.1:{port}/v1/jobs",
            json={"prompt": "a wheel", "width": 32, "height": 32, "frames": 5, "steps": 2},
        ).json()
        ended = read_events_until(
            f"ws://127.0.0.1:{port}/v1/events?since=0",
            lambda e: (
                e["type"] in ("job.succeeded", "job.failed") and e["data"]["job_id"] == job["id"]
            ),
        )
    assert ended["type"] == "job.succeeded", ended
    assert (home / "outputs" / ended["data"]["output"]).stat().st_size > 0
