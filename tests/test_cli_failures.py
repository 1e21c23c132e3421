"""No traceback reaches a person: commands that fail for a reason outside genvisor's control end
in a few plain lines with the error code and what to do, and a non-zero exit status. Each case
runs the real `genvisor` in a subprocess against a real failure.

A read-only data folder is made real: a read-only tmpfs mounted over the folder (EROFS, what a
read-only volume gives) where the test may mount; else the immutable attribute (`chattr +i`,
which stops even root); else, for a non-root user, mode 0555. Tests run as root here, where
mode bits alone would not stop a write.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.server_process import GENVISOR, server_env


@contextmanager
def read_only_folder(path: Path) -> Iterator[str]:
    """`path` made unwritable for real; yields the code a write there is categorized as."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0 and shutil.which("mount"):
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)], capture_output=True
        )
        if mounted.returncode == 0:
            try:
                yield "FS.READ_ONLY"
            finally:
                subprocess.run(["umount", str(path)], check=True)
            return
    if os.geteuid() == 0 and shutil.which("chattr"):
        frozen = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
        if frozen.returncode == 0:
            try:
                yield "FS.PERMISSION"
            finally:
                subprocess.run(["chattr", "-i", str(path)], check=True)
            return
    if os.geteuid() == 0:
        pytest.skip("root here can neither mount a read-only tmpfs nor set chattr +i")
    path.chmod(0o555)
    try:
        yield "FS.PERMISSION"
    finally:
        path.chmod(0o755)


def genvisor(*args: str, home: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [GENVISOR, *args],
        env=server_env(home, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_plain_failure(result: subprocess.CompletedProcess[str], code: str) -> None:
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("genvisor: "), result.stderr
    assert f"[{code}]" in lines[0], result.stderr
    assert any(line.startswith("  - ") for line in lines), result.stderr  # what to do
    assert len(lines) <= 8, result.stderr


def test_serve_with_a_read_only_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with read_only_folder(home) as code:
        result = genvisor("serve", "--port", "0", home=home)
    assert_plain_failure(result, code)
    assert str(home) in result.stderr


def test_make_tiny_with_a_read_only_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with read_only_folder(home) as code:
        result = genvisor("models", "make-tiny", home=home)
    assert_plain_failure(result, code)


def test_a_file_where_the_home_folder_should_be(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.write_text("not a folder")
    plain = genvisor("serve", "--port", "0", home=home)
    assert plain.returncode != 0
    assert "Traceback" not in plain.stderr
    assert plain.stderr.startswith("genvisor: ")
    assert "--debug" in plain.stderr
    # Asked for, the traceback follows the same lines.
    debug = genvisor("--debug", "serve", "--port", "0", home=home)
    assert debug.stderr.splitlines()[0] == plain.stderr.splitlines()[0]
    assert "Traceback (most recent call last)" in debug.stderr
    again = genvisor("serve", "--port", "0", home=home, GENVISOR_DEBUG="1")
    assert "Traceback (most recent call last)" in again.stderr


def test_pull_from_a_hub_without_file_metadata(tmp_path: Path, tiny_model: Path) -> None:
    """Some mirrors list a repository's files by name only: the pull asks the paths-info API
    for sizes and hashes instead of ending in `ValueError: ... no hash for this file`."""
    from tests.hub_server import HubRepo, HubServer

    with HubServer(HubRepo("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", tiny_model)) as hub:
        hub.file_metadata = False
        home = tmp_path / "home"
        result = genvisor(
            "models", "pull", "Wan2.1-T2V-1.3B",
            home=home,
            GENVISOR_HF_ENDPOINT=hub.endpoint,
            GENVISOR_HF_CACHE_DIR=str(tmp_path / "hf_cache"),
            HF_HOME=str(tmp_path / "hf_home"),
        )  # fmt: skip
        asked = [r for r in hub.requests if r.kind == "api" and r.method == "POST"]
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "files fetched" in result.stdout
    assert asked, "the paths-info API was not asked"
    verify = genvisor("models", "verify", "Wan2.1-T2V-1.3B", home=home,
                      GENVISOR_HF_CACHE_DIR=str(tmp_path / "hf_cache"))  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_first_generate_of_a_model_never_built_says_how_to_build_it(
    tmp_path: Path, tiny_model: Path
) -> None:
    """The model asked for was never built here: the command itself says which command builds
    it (not only `jobs show --json`), under a specific code, never "Something went wrong".
    (The default model, tiny-wan, is built by `serve` itself: see test_cli_fresh_home.)"""
    from tests.runtime_harness import make_home
    from tests.server_process import running_server

    home = make_home(tmp_path, tiny_model)
    with running_server(home) as server:
        result = subprocess.run(
            [GENVISOR, "generate", "a lighthouse", "--model", "tiny-wan-a14b", "--width", "32",
             "--height", "32", "--frames", "5", "--steps", "2", "--out", str(tmp_path / "o.mp4")],
            env=server_env(home, GENVISOR_URL=server.url),
            capture_output=True,
            text=True,
            timeout=120,
        )  # fmt: skip
    assert result.returncode != 0
    words = result.stdout + result.stderr
    assert "Traceback" not in words
    assert "UNKNOWN.ERROR" not in words
    assert "[MODEL." in words
    assert "genvisor models make-tiny --variant a14b" in words


def test_global_options_are_taken_after_the_command_too(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    from supervisor.cli.main import main

    with pytest.raises(SystemExit) as version:
        main(["--version"])
    assert version.value.code == 0
    assert capsys.readouterr().out.startswith("genvisor ")
    # `--config` given after the command reaches the command (here: a file that is not there).
    missing = str(tmp_path / "missing.toml")
    assert main(["explain", "--json", "CUDA out of memory", "--debug"]) == 0
    capsys.readouterr()
    result = genvisor("serve", "--port", "0", "--config", missing, home=tmp_path / "home")
    assert result.returncode == 2
    assert "missing.toml" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_long_failure_reason_keeps_what_to_do() -> None:
    from supervisor.cli.state_cmd import _shorten

    reason = (
        "job j1 failed at load: model 'tiny-wan' is not usable: missing: . (no model folder); "
        + "no usable fallback; " * 8
        + "and so on. Run `genvisor models make-tiny`"
    )
    short = _shorten(reason)
    assert len(short) <= 240
    assert short.endswith("Run `genvisor models make-tiny`")
    assert short.startswith("job j1 failed at load")
