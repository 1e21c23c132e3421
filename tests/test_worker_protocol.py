"""The worker protocol and its framing, over a real socketpair."""

from __future__ import annotations

import json
import socket
import struct

import anyio
import pytest
from pydantic import ValidationError

from actors.worker.channel import AsyncChannel, BlockingChannel, ChannelClosed
from actors.worker.memory_cap import parse_size
from actors.worker.protocol import (
    PROTOCOL_VERSION,
    Cancel,
    Cancelled,
    Done,
    Failed,
    Generate,
    GenerationParams,
    Heartbeat,
    Load,
    Loaded,
    Offload,
    Ping,
    PipelineOptions,
    Progress,
    Ready,
    Shutdown,
    StageTiming,
    decode_control,
    decode_worker,
    encode_message,
)
from supervisor.core.exceptions import ConfigError, ProtocolError
from supervisor.core.stages import Stage
from supervisor.errors.report import ErrorReport

PARAMS = GenerationParams(prompt="a red fox", width=32, height=32, num_frames=5, steps=2, seed=3)
OPTIONS = PipelineOptions(vae_tiling=True, offload=Offload.NONE)

CONTROL_MESSAGES = [
    Load(model_path="/m/tiny-wan", model_name="tiny-wan", options=OPTIONS),
    Generate(job_id="j-1", params=PARAMS, options=OPTIONS, output_dir="/o", decode_only_from="/x"),
    Cancel(job_id="j-1"),
    Shutdown(),
    Ping(),
]


def _report() -> ErrorReport:
    try:
        raise MemoryError("out of memory")
    except MemoryError as exc:
        return ErrorReport.from_exception(exc, stage=Stage.DECODE, job_id="j-1")


WORKER_MESSAGES = [
    Ready(pid=12, device="cpu", torch_version="2", diffusers_version="0.4"),
    Heartbeat(ts=1.5, rss_bytes=10, busy_job_id="j-1", last_progress_ts=1.0),
    Progress(job_id="j-1", stage=Stage.DENOISE, step=1, total=2, elapsed_s=0.1),
    StageTiming(job_id="j-1", stage=Stage.DECODE, seconds=0.2),
    Done(
        job_id="j-1",
        output_path="/o/j-1.mp4",
        sidecar_path="/o/j-1.json",
        timings={Stage.ENCODE: 0.1, Stage.SAVE: 0.2},
        peak_memory_bytes=5,
        params_used=PARAMS,
        options_used=OPTIONS,
    ),
    Failed(job_id="j-1", report=_report(), latents_path="/o/j-1.latents.safetensors"),
    Cancelled(job_id="j-1", stage=Stage.DENOISE),
    Loaded(model="tiny-wan", options=OPTIONS, load_s=0.3, reloaded=False),
]


@pytest.mark.parametrize("msg", CONTROL_MESSAGES, ids=lambda m: m.kind)
def test_control_messages_round_trip(msg: object) -> None:
    assert decode_control(encode_message(msg)) == msg  # type: ignore[arg-type]


@pytest.mark.parametrize("msg", WORKER_MESSAGES, ids=lambda m: m.kind)
def test_worker_messages_round_trip(msg: object) -> None:
    assert decode_worker(encode_message(msg)) == msg  # type: ignore[arg-type]


def test_foreign_version_and_garbage_are_protocol_errors() -> None:
    body = json.loads(encode_message(Ping()))
    body["v"] = PROTOCOL_VERSION + 1
    with pytest.raises(ProtocolError, match="protocol version"):
        decode_control(json.dumps(body).encode())
    with pytest.raises(ProtocolError, match="not JSON"):
        decode_control(b"\xff{")
    with pytest.raises(ProtocolError, match="bad worker message"):
        decode_worker(encode_message(Ping()))  # a control message is not a worker message


def test_client_strings_never_become_paths() -> None:
    with pytest.raises(ValidationError):
        Generate(job_id="../../etc/passwd", params=PARAMS, output_dir="/o")
    with pytest.raises(ValidationError):
        GenerationParams(prompt="x", num_frames=6)  # Wan needs 4k+1 frames
    with pytest.raises(ValidationError):
        PipelineOptions(device="tpu")


def test_parse_size() -> None:
    assert parse_size("2GiB") == 2 * 1024**3
    assert parse_size("1500 MiB") == 1500 * 1024**2
    assert parse_size("3GB") == 3 * 1000**3
    with pytest.raises(ConfigError, match="device_memory_limit"):
        parse_size("lots")


@pytest.mark.anyio
async def test_frames_cross_a_socketpair_both_ways() -> None:
    parent, child = socket.socketpair()
    control = await AsyncChannel.from_socket(parent)
    worker = BlockingChannel(child)
    try:
        for msg in CONTROL_MESSAGES:
            await control.send(msg)
            assert await anyio.to_thread.run_sync(worker.receive) == msg
        for wmsg in WORKER_MESSAGES:
            await anyio.to_thread.run_sync(worker.send, wmsg)
            assert await control.receive() == wmsg
        # A frame larger than the limit is refused before it is read.
        child.sendall(struct.pack(">I", 64 * 1024 * 1024))
        with pytest.raises(ProtocolError, match="exceeds"):
            await control.receive()
    finally:
        worker.close()
    with pytest.raises(ChannelClosed):
        await control.receive()
    await control.aclose()


def test_a_held_frame_goes_out_in_one_write_with_the_next() -> None:
    # A stage's timing waits for the next frame (from any thread), so the control process
    # wakes once for both; nothing is reordered or lost.
    parent, child = socket.socketpair()
    worker = BlockingChannel(child)
    parent.setblocking(False)
    timing = StageTiming(job_id="j-1", stage=Stage.DECODE, seconds=0.2)
    progress = Progress(job_id="j-1", stage=Stage.SAVE, elapsed_s=0.3)
    beat = Heartbeat(ts=1.5, rss_bytes=10)
    try:
        worker.send_with_next(timing)
        with pytest.raises(BlockingIOError):
            parent.recv(1)  # held: nothing written yet
        worker.send(progress)
        worker.send_with_next(timing)
        worker.send_with_next(timing)
        worker.send(beat)
        written = parent.recv(1 << 16)
        frames = []
        while written:
            (length,) = struct.unpack(">I", written[:4])
            frames.append(decode_worker(written[4 : 4 + length]))
            written = written[4 + length :]
        assert frames == [timing, progress, timing, timing, beat]
    finally:
        worker.close()
        parent.close()


@pytest.mark.anyio
async def test_a_frame_larger_than_the_socket_buffer_is_sent_whole() -> None:
    # The control side writes what the socket takes at once and the rest through the stream,
    # which waits for the worker to read: the frame arrives whole, then the next one.
    parent, child = socket.socketpair()
    control = await AsyncChannel.from_socket(parent)
    worker = BlockingChannel(child)
    big = Load(model_path="/m/" + "x" * 600_000, model_name="tiny-wan", options=OPTIONS)
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(control.send, big)
            assert await anyio.to_thread.run_sync(worker.receive) == big
        await control.send(Ping())
        assert await anyio.to_thread.run_sync(worker.receive) == Ping()
    finally:
        worker.close()
        await control.aclose()
