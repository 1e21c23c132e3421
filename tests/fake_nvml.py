"""A FAKE pynvml module that can wedge: this machine has no NVIDIA GPU (and no driver to hang).

`FakeNvml` answers the calls `NvmlSource` and `resolve_device` make for one GPU. `wedge()` makes
the next memory queries block inside the "driver" until `release()` (or `max_block_s`, so a
broken test cannot leave a thread behind for ever), the way a hung driver blocks its caller.
`entered` is set when a caller is stuck in it; `blocked_calls` counts the callers that were.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

GiB = 1024**3


class FakeNvmlError(Exception):
    pass


@dataclass
class FakeMemoryInfo:
    total: int
    used: int
    free: int


class FakeNvml:
    NVMLError = FakeNvmlError

    def __init__(
        self,
        *,
        name: str = "NVIDIA GeForce RTX 4080",
        devices: int = 1,
        total: int = 16 * GiB,
        free: int = 14 * GiB,
        max_block_s: float = 30.0,
    ) -> None:
        self.name = name
        self.devices = devices
        self.total, self.free = total, free
        self.max_block_s = max_block_s
        self._wedged = False
        self._released = threading.Event()
        self.entered = threading.Event()
        self.blocked_calls = 0
        self.memory_calls = 0

    def wedge(self) -> None:
        self._released.clear()
        self.entered.clear()
        self._wedged = True

    def release(self) -> None:
        self._wedged = False
        self._released.set()

    def nvmlInit(self) -> None:  # noqa: N802 - NVML's names
        pass

    def nvmlDeviceGetCount(self) -> int:  # noqa: N802
        return self.devices

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:  # noqa: N802
        return index

    def nvmlDeviceGetName(self, handle: int) -> bytes:  # noqa: N802
        return self.name.encode()

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> FakeMemoryInfo:  # noqa: N802
        self.memory_calls += 1
        if self._wedged:
            self.blocked_calls += 1
            self.entered.set()
            self._released.wait(self.max_block_s)
        return FakeMemoryInfo(self.total, self.total - self.free, self.free)
