"""Errors of the model store. Each carries a stable `ErrorCode` and a `remedy`: the sentence
that tells the person what to do (the exact command or setting), so no caller has to guess."""

from __future__ import annotations

from supervisor.core.exceptions import GenvisorError
from supervisor.errors.categories import ErrorCode

__all__ = [
    "DiskSpaceRefused",
    "DownloadFailed",
    "ModelStoreError",
    "ModelUnavailable",
    "PickleWeightsRefused",
    "UnknownModel",
]


class ModelStoreError(GenvisorError):
    """Base: `code` classifies it, `remedy` says what to do next."""

    def __init__(self, message: str, *, model: str, code: ErrorCode, remedy: str) -> None:
        self.model = model
        self.code = code
        self.remedy = remedy
        super().__init__(f"{message}. {remedy}" if remedy else message)


class UnknownModel(ModelStoreError):
    def __init__(self, *, model: str, known: list[str]) -> None:
        self.known = known
        super().__init__(
            f"no model named {model!r} in the registry",
            model=model,
            code=ErrorCode.CONFIG_INVALID,
            remedy=f"Known models: {', '.join(known)}; add entries in your models_file.",
        )


class DownloadFailed(ModelStoreError):
    """A pull that stopped: gated, not found, bad revision, offline, or retries exhausted."""

    def __init__(
        self, *, model: str, code: ErrorCode, reason: str, remedy: str, file: str | None = None
    ) -> None:
        self.reason = reason
        self.file = file
        where = f" ({file})" if file else ""
        super().__init__(
            f"cannot download {model!r}{where}: {reason}", model=model, code=code, remedy=remedy
        )


class DiskSpaceRefused(ModelStoreError):
    """Refused before the first byte: the files would not fit."""

    def __init__(self, *, model: str, needed: int, free: int, where: str) -> None:
        self.needed = needed
        self.free = free
        self.where = where
        super().__init__(
            f"not enough disk space for {model!r}: needs {_gib(needed)}, {_gib(free)} free "
            f"on {where}",
            model=model,
            code=ErrorCode.FS_DISK_FULL,
            remedy=f"Free at least {_gib(needed - free)} there, or point hf_cache_dir "
            "(GENVISOR_HF_CACHE_DIR) at a larger disk",
        )


class PickleWeightsRefused(ModelStoreError):
    """Pickle weights run arbitrary code when loaded; they are refused unless allowed."""

    def __init__(self, *, model: str, files: list[str]) -> None:
        self.files = files
        super().__init__(
            f"{model!r} has weights only as pickle files ({', '.join(files)})",
            model=model,
            code=ErrorCode.MODEL_UNSAFE_FORMAT,
            remedy="Set allow_pickle_weights = true (GENVISOR_ALLOW_PICKLE_WEIGHTS=1) only if "
            "you trust this repository",
        )


class ModelUnavailable(ModelStoreError):
    """The model can not be used now (missing, partial, corrupted) and was not fixed."""

    def __init__(self, *, model: str, code: ErrorCode, reason: str, remedy: str) -> None:
        self.reason = reason
        super().__init__(
            f"model {model!r} is not usable: {reason}", model=model, code=code, remedy=remedy
        )


def _gib(n: int) -> str:
    if n < 1 << 20:
        return f"{max(n, 0)} bytes"
    return f"{n / (1 << 30):.2f} GiB"
