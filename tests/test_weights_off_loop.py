"""Safetensors headers are read in a worker thread: a model folder on a slow disk (here a FIFO
whose writer holds back the bytes) never holds the event loop."""

from __future__ import annotations

import json
import os
import struct
import threading
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from supervisor.recovery.calibration import CalibrationStore
from supervisor.recovery.memory_accounting import MemoryAccounting

pytestmark = pytest.mark.anyio


async def test_header_reads_never_hold_the_loop(tmp_path: Path) -> None:
    model = tmp_path / "tiny-wan"
    (model / "transformer").mkdir(parents=True)
    fifo = model / "transformer" / "diffusion_pytorch_model.safetensors"
    os.mkfifo(fifo)
    header = json.dumps({"w": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}})
    payload = struct.pack("<Q", len(header)) + header.encode() + bytes(64)
    reader_in, go = threading.Event(), threading.Event()

    def slow_disk() -> None:
        with fifo.open("wb") as f:  # returns once the reader has opened its end
            reader_in.set()
            go.wait(10.0)  # the bytes come late (on a loop-blocking read: after 10 s)
            f.write(payload)

    writer = threading.Thread(target=slow_disk, daemon=True)
    writer.start()
    accounting = MemoryAccounting(
        device="cpu", cap=None, calibration=CalibrationStore(tmp_path / "vram.sqlite3")
    )
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(accounting.model_resolved, "tiny-wan", model)
            await anyio.to_thread.run_sync(reader_in.wait, 10.0)
            # The header read has begun and waits for its bytes; the loop runs this test.
            assert "tiny-wan" not in accounting._weights
            go.set()
    writer.join(10.0)
    weights = accounting._weights["tiny-wan"]
    assert weights.stored_bytes == 64
