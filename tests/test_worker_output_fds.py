"""A full disk costs the worker no file descriptor: a real worker, a real full tmpfs.

Before the fix every disk-full save kept the `.mp4.part` open (PyAV opened it by path and never
closed a container whose header write failed), so `/proc/<worker>/fd` grew by one per failure
and the full volume could not be unmounted until the worker died.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from actors.worker.protocol import (
    Cancelled,
    Done,
    Failed,
    Generate,
    GenerationParams,
    Load,
    Loaded,
    WorkerMessage,
)
from actors.worker.spawn import WorkerHandle, WorkerLaunch, spawn_worker

pytestmark = pytest.mark.slow

SMALL = GenerationParams(prompt="a red fox", width=32, height=32, num_frames=5, steps=2, seed=7)
FAILURES = 3


def _mount(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)


@contextlib.contextmanager
def full_tmpfs(folder: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs at `folder`, filled to the last byte."""
    folder.mkdir()
    mounted = _mount(["mount", "-t", "tmpfs", "-o", "size=256k", "genvisor-fds", str(folder)])
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        filler = folder / "filler"
        with filler.open("wb", buffering=0) as handle, contextlib.suppress(OSError):
            while True:  # until ENOSPC
                handle.write(b"\0" * 4096)
        yield folder
    finally:
        if os.path.ismount(folder):
            _mount(["umount", "-l", str(folder)])


def open_fds(pid: int) -> list[str]:
    """What the process's descriptors point at. Reads under /proc are left out: the heartbeat
    thread opens and closes /proc/self/statm once a second."""
    targets = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):  # closed while listing
            targets.append(os.readlink(f"/proc/{pid}/fd/{name}"))
    return sorted(t for t in targets if not t.startswith("/proc/"))


async def outcome(handle: WorkerHandle, limit_s: float = 120.0) -> WorkerMessage:
    with anyio.fail_after(limit_s):
        while True:
            msg = await handle.receive()
            if isinstance(msg, Done | Failed | Cancelled | Loaded):
                return msg


@pytest.fixture
async def worker(tmp_path: Path, tiny_model: Path) -> AsyncIterator[WorkerHandle]:
    handle = await spawn_worker(WorkerLaunch(log_path=tmp_path / "worker.log"))
    try:
        await handle.send(Load(model_path=str(tiny_model), model_name="tiny-wan"))
        loaded = await outcome(handle)
        assert isinstance(loaded, Loaded), loaded
        yield handle
    finally:
        await handle.shutdown(grace_s=5.0)


@pytest.mark.anyio
async def test_disk_full_saves_leave_no_open_descriptor_and_the_volume_unmounts(
    worker: WorkerHandle, tmp_path: Path
) -> None:
    # A job that succeeds first: whatever the first save opens lazily is in the baseline.
    warm = await _run(worker, "warm", tmp_path / "ok")
    assert isinstance(warm, Done), warm
    before = open_fds(worker.pid)
    with full_tmpfs(tmp_path / "full") as full:
        for n in range(FAILURES):
            failed = await _run(worker, f"full-{n}", full)
            assert isinstance(failed, Failed), failed
            assert failed.report.stage == "save"
            assert failed.report.errno_name == "ENOSPC", failed.report
            # The catalog's "no space left to write {path}" gets the file it was writing.
            assert f".full-{n}.mp4." in failed.report.message
        during = open_fds(worker.pid)
        assert len(during) == len(before), during  # before the fix: one more per failure
        assert [t for t in during if str(full) in t] == []
        assert during == before
        assert sorted(p.name for p in full.iterdir()) == ["filler"]
        # The point of the issue: the full volume can go away while the worker lives on.
        unmounted = _mount(["umount", str(full)])
        assert unmounted.returncode == 0, unmounted.stderr
    assert open_fds(worker.pid) == before
    again = await _run(worker, "after", tmp_path / "ok")
    assert isinstance(again, Done), again


async def _run(worker: WorkerHandle, job_id: str, out: Path) -> WorkerMessage:
    await worker.send(Generate(job_id=job_id, params=SMALL, output_dir=str(out)))
    return await outcome(worker)
