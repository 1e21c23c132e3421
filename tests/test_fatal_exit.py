"""When the runtime cannot go on, the process exits non-zero (a service manager starts it
again) instead of serving 500s: a real full disk under the event journal of a real server."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server_process import running_server

pytestmark = pytest.mark.slow


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "genvisor-test", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def _fill(folder: Path) -> None:
    with contextlib.suppress(OSError), (folder / "filler").open("wb") as f:
        while True:  # until ENOSPC
            f.write(b"\0" * 65536)
            f.flush()


def test_a_journal_that_cannot_be_written_ends_the_process_non_zero(
    tmp_path: Path, tiny_model: Path
) -> None:
    home = tmp_path / "home"
    with small_tmpfs(home, "8m"):
        shutil.copytree(tiny_model, home / "models" / "tiny-wan")
        with running_server(home) as srv:
            _fill(home)
            # Telemetry is journaled every half second: the next flush meets the full disk.
            code = srv.proc.wait(timeout=120)
            log = list(srv.log_lines)
        assert code == 70, "".join(log[-20:])
        records = [json.loads(line) for line in log if line.startswith("{")]
        fatal = [r for r in records if r["level"] == "critical"]
        assert len(fatal) == 1, "".join(log[-20:])
        assert fatal[0]["msg"].startswith("genvisor cannot go on (")
        assert "database or disk is full" in fatal[0]["msg"]
