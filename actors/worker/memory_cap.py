"""The optional device memory cap of the worker process (setting `device_memory_limit`).

- CUDA: `torch.cuda.set_per_process_memory_fraction`, so a big GPU behaves like a small one and
  the caching allocator raises a real `torch.OutOfMemoryError`.
- CPU: `RLIMIT_AS` on the worker process, so the CPU allocator fails for real with
  `DefaultCPUAllocator: can't allocate memory`. The cap covers the whole address space,
  including what importing torch reserves; `address_space_bytes()` measures that baseline and
  `apply_memory_cap` refuses a cap below it (the worker could not even run).

`parse_size` is torch-free so the control side can validate the setting.
"""

from __future__ import annotations

import re
import resource
from dataclasses import dataclass
from pathlib import Path

from supervisor.core.exceptions import ConfigError

__all__ = ["AppliedCap", "address_space_bytes", "apply_memory_cap", "parse_size"]

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """'2GiB' -> 2147483648; '1.5 GB' -> 1500000000; a bare number is bytes."""
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ConfigError(
            key="device_memory_limit",
            value=text,
            allowed="a size such as '2GiB', '1500MiB' or '3GB' (empty for no cap)",
        )
    return int(float(match.group(1)) * _UNITS[unit])


def address_space_bytes() -> int:
    """This process's current virtual address space (VmSize): what RLIMIT_AS limits."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("VmSize missing from /proc/self/status")


@dataclass(frozen=True, slots=True)
class AppliedCap:
    device: str
    limit_bytes: int
    mechanism: str
    baseline_bytes: int | None = None
    fraction: float | None = None


def apply_memory_cap(limit_bytes: int, device: str) -> AppliedCap:
    if device.startswith("cuda"):
        return _apply_cuda(limit_bytes, device)
    baseline = address_space_bytes()
    if limit_bytes <= baseline:
        raise ConfigError(
            key="device_memory_limit",
            value=limit_bytes,
            allowed=(
                f"more than the worker's address space after start-up ({baseline} bytes): "
                "on the CPU the cap is RLIMIT_AS, which counts everything torch maps"
            ),
        )
    resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    return AppliedCap(
        device=device, limit_bytes=limit_bytes, mechanism="RLIMIT_AS", baseline_bytes=baseline
    )


def _apply_cuda(limit_bytes: int, device: str) -> AppliedCap:
    import torch

    dev = torch.device(device)
    index = dev.index if dev.index is not None else torch.cuda.current_device()
    total = torch.cuda.get_device_properties(index).total_memory
    fraction = min(1.0, limit_bytes / total)
    torch.cuda.set_per_process_memory_fraction(fraction, index)
    return AppliedCap(
        device=f"cuda:{index}",
        limit_bytes=limit_bytes,
        mechanism="set_per_process_memory_fraction",
        fraction=fraction,
    )
