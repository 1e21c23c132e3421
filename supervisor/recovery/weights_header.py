"""Weight sizes from safetensors headers, without loading a tensor (and without torch).

A safetensors file starts with an 8-byte little-endian header length N, then N bytes of JSON:
``{"name": {"dtype": "F32", "shape": [..], "data_offsets": [a, b]}, "__metadata__": {..}}``.
Only the header is read, so sizing a 28 GB checkpoint costs a few kilobytes of I/O.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from supervisor.core.exceptions import WeightsHeaderError

__all__ = [
    "ComponentWeights",
    "ModelWeights",
    "TensorInfo",
    "read_safetensors_header",
    "summarize_weights",
]

# A header larger than this is not a real checkpoint header (the format caps it at 100 MB).
MAX_HEADER_BYTES = 100 * 1024 * 1024

DTYPE_BYTES: dict[str, float] = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
    "F4": 0.5,
    "I64": 8,
    "U64": 8,
    "I32": 4,
    "U32": 4,
    "I16": 2,
    "U16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4"})


@dataclass(frozen=True, slots=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def stored_bytes(self) -> int:
        return math.ceil(self.numel * DTYPE_BYTES[self.dtype])

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES


def read_safetensors_header(path: Path) -> list[TensorInfo]:
    """The tensors a safetensors file declares; WeightsHeaderError if the header is broken."""
    try:
        with path.open("rb") as f:
            prefix = f.read(8)
            if len(prefix) != 8:
                raise WeightsHeaderError(path=str(path), reason="shorter than 8 bytes")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES:
                raise WeightsHeaderError(path=str(path), reason=f"header length {length}")
            raw = f.read(length)
    except OSError as exc:
        raise WeightsHeaderError(path=str(path), reason=str(exc)) from exc
    if len(raw) != length:
        raise WeightsHeaderError(path=str(path), reason="truncated header")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsHeaderError(path=str(path), reason=f"header is not JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise WeightsHeaderError(path=str(path), reason="header is not a JSON object")
    tensors: list[TensorInfo] = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or entry.get("dtype") not in DTYPE_BYTES:
            dtype = entry.get("dtype") if isinstance(entry, dict) else entry
            raise WeightsHeaderError(path=str(path), reason=f"{name}: unknown dtype {dtype!r}")
        shape = entry.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise WeightsHeaderError(path=str(path), reason=f"{name}: bad shape {shape!r}")
        tensors.append(TensorInfo(name, entry["dtype"], tuple(shape)))
    return tensors


@dataclass(frozen=True, slots=True)
class ComponentWeights:
    """One pipeline component (transformer, vae, text_encoder, ...)."""

    name: str
    float_params: int
    # Floats in matrices and kernels (ndim >= 2): what layerwise fp8 storage shrinks.
    matrix_params: int
    other_bytes: int
    stored_bytes: int
    largest_tensor_params: int

    def bytes_in(self, dtype_bytes: float, *, fp8_matrices: bool = False) -> int:
        """Resident bytes when floats are held in `dtype_bytes` each (matrices in one byte
        under layerwise fp8 storage, which keeps norms and biases in the compute dtype)."""
        if fp8_matrices:
            floats = self.matrix_params * 1 + (self.float_params - self.matrix_params) * dtype_bytes
        else:
            floats = self.float_params * dtype_bytes
        return math.ceil(floats) + self.other_bytes


@dataclass(frozen=True, slots=True)
class ModelWeights:
    components: dict[str, ComponentWeights]

    @property
    def stored_bytes(self) -> int:
        return sum(c.stored_bytes for c in self.components.values())

    def get(self, name: str) -> ComponentWeights | None:
        return self.components.get(name)


def _component(name: str, tensors: Iterable[TensorInfo]) -> ComponentWeights:
    float_params = matrix_params = other = stored = largest = 0
    for t in tensors:
        stored += t.stored_bytes
        if t.is_float:
            float_params += t.numel
            largest = max(largest, t.numel)
            if len(t.shape) >= 2:
                matrix_params += t.numel
        else:
            other += t.stored_bytes
    return ComponentWeights(name, float_params, matrix_params, other, stored, largest)


def summarize_weights(model_dir: Path) -> ModelWeights:
    """Every ``*.safetensors`` under a diffusers model directory, grouped by component (the
    first directory level; files at the top level form the component "")."""
    by_component: dict[str, list[TensorInfo]] = {}
    for file in sorted(model_dir.rglob("*.safetensors")):
        relative = file.relative_to(model_dir)
        name = relative.parts[0] if len(relative.parts) > 1 else ""
        by_component.setdefault(name, []).extend(read_safetensors_header(file))
    return ModelWeights({n: _component(n, ts) for n, ts in sorted(by_component.items())})
