"""`genvisor serve` in a fresh data folder: the default model (tiny-wan) is built before the
server starts, so that the first job runs; a default model that cannot run (never downloaded,
or a build that failed) makes the server degraded with the reason and the command that fixes
it, never READY with nothing to run. Unknown GENVISOR_* variables are warned about at start."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from supervisor.core.settings import CONFIG_DIR, load_settings
from tests.runtime_harness import make_home
from tests.server_process import ServerProcess, read_events_until, running_server

SMALL = {"prompt": "a paper boat", "width": 32, "height": 32, "frames": 5, "steps": 2}


def _until(srv: ServerProcess, match: Any) -> dict[str, Any]:
    return read_events_until(f"{srv.ws_url}/v1/events?since=0", match)


def _to(state: str) -> Any:
    return lambda e: e["type"] == "supervisor.transition" and e["data"]["to"] == state


def test_the_default_model_problem_names_the_command_that_fixes_it(
    tmp_path: Path, tiny_model: Path
) -> None:
    from actors.models.registry import load_registry
    from supervisor.runtime.start_up import default_model_problem

    home = make_home(tmp_path, tiny_model)
    registry = load_registry(CONFIG_DIR)
    present = load_settings(overrides={"home": home})
    assert default_model_problem(present, registry) is None
    hub = load_settings(overrides={"home": home, "default_model": "Wan2.1-T2V-1.3B"})
    said = default_model_problem(hub, registry)
    assert said is not None
    assert "never downloaded" in said
    assert "`genvisor models pull Wan2.1-T2V-1.3B`" in said
    shutil.rmtree(home / "models" / "tiny-wan")
    said = default_model_problem(present, registry)
    assert said is not None
    assert "tiny-wan" in said
    assert "not built" in said
    assert "`genvisor models make-tiny`" in said


@pytest.mark.slow
def test_serve_in_a_fresh_home_builds_the_default_model_and_runs_a_job(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with running_server(home) as srv:
        _until(srv, _to("ready"))
        assert any("built the default model tiny-wan" in line for line in srv.log_lines)
        job = httpx.post(f"{srv.url}/v1/jobs", json=SMALL, timeout=30).json()
        ended = _until(
            srv,
            lambda e: (
                e["type"] in ("job.succeeded", "job.failed") and e["data"]["job_id"] == job["id"]
            ),
        )
        state = httpx.get(f"{srv.url}/v1/state", timeout=10).json()
    assert ended["type"] == "job.succeeded", ended
    assert state["degraded_reasons"] == {}
    assert (home / "models" / "tiny-wan" / "model_index.json").is_file()


@pytest.mark.slow
def test_serve_whose_default_model_cannot_be_built_starts_degraded(tmp_path: Path) -> None:
    """A file where the models folder should be: the build fails, the server still starts and
    says, as a degraded reason, what is missing and how to build it."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "models").write_text("not a folder")
    with running_server(home, GENVISOR_PROT="9000") as srv:
        _until(srv, _to("degraded"))
        state = httpx.get(f"{srv.url}/v1/state", timeout=10).json()
    assert state["state"] == "degraded"
    reason = state["degraded_reasons"]["model:tiny-wan"]
    assert "default model tiny-wan cannot run" in reason
    assert "genvisor models make-tiny" in reason
    assert any("could not be built" in line for line in srv.log_lines)
    # A mistyped GENVISOR_* variable is said at start, with the setting it probably meant.
    assert any("GENVISOR_PROT" in ln and "GENVISOR_PORT" in ln for ln in srv.log_lines)
