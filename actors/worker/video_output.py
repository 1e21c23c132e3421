"""Writes a finished video: MP4 (H.264 through PyAV's bundled ffmpeg) plus a JSON sidecar.

Invariant: no partial output is ever visible. Each file is written under a hidden temporary
name in the same directory, flushed, then `os.replace`d into place; the sidecar is renamed
last, so a sidecar's presence means its MP4 is complete. Names derive only from the job id
(validated by `protocol.JOB_ID_PATTERN`), never from a client string.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

import av
import numpy as np
import numpy.typing as npt

from actors.worker.protocol import JOB_ID_PATTERN

__all__ = ["OutputPaths", "output_paths", "remove_partials", "write_outputs"]

_JOB_ID = re.compile(JOB_ID_PATTERN)


@dataclass(frozen=True, slots=True)
class OutputPaths:
    video: Path
    sidecar: Path
    latents: Path


def output_paths(output_dir: Path, job_id: str) -> OutputPaths:
    if not _JOB_ID.match(job_id):
        raise ValueError(f"job id {job_id!r} is not a server-generated id")
    return OutputPaths(
        video=output_dir / f"{job_id}.mp4",
        sidecar=output_dir / f"{job_id}.json",
        latents=output_dir / f"{job_id}.latents.safetensors",
    )


def _temp_name(final: Path) -> Path:
    return final.with_name(f".{final.name}.{os.getpid()}.part")


def remove_partials(paths: OutputPaths) -> None:
    """Drop temporary files a failed or cancelled save left behind."""
    for final in (paths.video, paths.sidecar):
        _temp_name(final).unlink(missing_ok=True)


@contextlib.contextmanager
def _synced_file(target: Path) -> Iterator[BinaryIO]:
    """Open `target` for writing; flush and fsync it if the body succeeds; close it always.

    Invariant: this process opens and closes every output descriptor itself, and PyAV gets
    only the file object. Given a path, PyAV opens the descriptor in `avio_open` but closes it
    only for a container whose header was written: a header write that failed (ENOSPC on a full
    disk) leaked one descriptor per job, pinning the unlinked `.part` file and the volume.
    """
    handle = target.open("wb")
    try:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())
    except OSError as exc:
        _close_quietly(handle)
        if exc.filename is not None or exc.errno is None:
            raise
        # A write through a file object names no file; the catalog's message does
        # ("no space left to write {path}"), so the path goes back in.
        raise OSError(exc.errno, exc.strerror, str(target)) from exc
    except BaseException:
        _close_quietly(handle)
        raise
    handle.close()


def _mux(handle: BinaryIO, frames: npt.NDArray[np.uint8], fps: int) -> None:
    container = av.open(handle, mode="w", format="mp4")
    try:
        _encode_frames(container, frames, fps)
    except BaseException:
        _close_quietly(container)
        raise
    container.close()  # writes the trailer; its failure (a full disk) is the one to report


def _close_quietly(resource: av.container.OutputContainer | BinaryIO) -> None:
    """Close after a failure, keeping that failure the one reported.

    Both closes release their resource even when they raise: PyAV marks the container done
    before re-raising a failed trailer write, and a buffered file closes its descriptor after
    a failed flush. What they would raise (the same full disk again, or PyAV's errno-less
    `PyAVCallbackError` once the first error is consumed) hides the real cause's errno.
    """
    with contextlib.suppress(Exception):
        resource.close()


def _encode_frames(
    container: av.container.OutputContainer, frames: npt.NDArray[np.uint8], fps: int
) -> None:
    count, height, width, _ = frames.shape
    stream = container.add_stream("libx264", rate=Fraction(fps, 1))
    stream.width = width
    stream.height = height
    stream.pix_fmt = "yuv420p"
    # Deterministic output: one thread, fixed CRF; same frames give the same bytes.
    stream.options = {"crf": "18", "preset": "medium", "threads": "1"}
    for index in range(count):
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[index]), format="rgb24")
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)


def write_outputs(
    paths: OutputPaths,
    frames: npt.NDArray[np.uint8],
    fps: int,
    sidecar: Mapping[str, Any],
) -> None:
    """`frames` is (frames, height, width, 3) uint8 RGB."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be (F, H, W, 3) uint8, got {frames.shape} {frames.dtype}")
    paths.video.parent.mkdir(parents=True, exist_ok=True)
    video_tmp = _temp_name(paths.video)
    sidecar_tmp = _temp_name(paths.sidecar)
    try:
        with _synced_file(video_tmp) as handle:
            _mux(handle, frames, fps)
        os.replace(video_tmp, paths.video)
        text = json.dumps(dict(sidecar), indent=2, sort_keys=True) + "\n"
        with _synced_file(sidecar_tmp) as handle:
            handle.write(text.encode())
        os.replace(sidecar_tmp, paths.sidecar)
    except BaseException:
        remove_partials(paths)
        # A sidecar-less MP4 is an incomplete result: take it back.
        if not paths.sidecar.exists():
            paths.video.unlink(missing_ok=True)
        raise
