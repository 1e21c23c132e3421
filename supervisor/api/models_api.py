"""The model endpoints: availability, pull (in the background), verify.

Model names are looked up in the registry; a name never becomes a path.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Query, status

from actors.model_loader import (
    ListModels,
    ModelList,
    Operation,
    OperationOutcome,
    PullModel,
    RepairModel,
    VerifyModel,
)
from actors.models.model_errors import ModelStoreError
from actors.models.registry import ModelEntry
from supervisor.api.api_errors import ApiError
from supervisor.core.exceptions import ActorNotRunning
from supervisor.errors import ErrorCode
from supervisor.runtime import Runtime

__all__ = ["add_model_routes"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def outcome_json(outcome: OperationOutcome) -> dict[str, Any]:
    verify = outcome.verify
    return {
        "model": outcome.model,
        "operation": outcome.kind.value,
        "ok": outcome.ok,
        "error_code": outcome.error_code.value if outcome.error_code else None,
        "message": outcome.message,
        "files": outcome.files,
        "problems": [str(p) for p in verify.problems] if verify is not None else [],
    }


WaitQuery = Annotated[
    bool, Query(description="answer once the operation has ended, with its outcome")
]


def add_model_routes(router: APIRouter, runtime: Runtime, guarded: list[Any]) -> None:
    def _known(name: str) -> str:
        if not _NAME.match(name) or name not in runtime.registry:
            raise ApiError(
                status.HTTP_404_NOT_FOUND,
                code=ErrorCode.MODEL_NOT_FOUND,
                title="No such model",
                message=f"{name[:80]!r} is not in the registry; known: "
                + ", ".join(runtime.registry.names()),
                suggestions=["Add your own entries in the file named by the models_file setting."],
            )
        return name

    def _loader() -> Any:
        loader = runtime.supervisor.child("model_loader")
        if loader is None or not loader.running:
            raise ApiError(
                status.HTTP_503_SERVICE_UNAVAILABLE,
                code=ErrorCode.WORKER_CRASHED,
                title="The model loader is not running",
                message="the model loader is restarting; try again in a moment",
                headers={"Retry-After": "5"},
            )
        return loader

    @router.get("/v1/models", tags=["models"], dependencies=guarded)
    async def list_models() -> dict[str, Any]:
        """Every registered model: present, missing, partial or corrupted, with sizes."""
        listing = await _loader().ask(ListModels(), ModelList, timeout=60.0)
        registry = runtime.registry
        return {
            "models": [
                {**m.to_json(), **_what_it_takes(registry.get(m.name))}
                if m.name in registry
                else m.to_json()
                for m in listing.models
            ]
        }

    @router.post(
        "/v1/models/{name}/pull",
        tags=["models"],
        dependencies=guarded,
        status_code=status.HTTP_202_ACCEPTED,
    )
    async def pull_model(name: str, wait: WaitQuery = False) -> dict[str, Any]:
        """Start a download; follow it with model.download.progress events (or `wait` for its
        outcome: what `genvisor models pull` does while a server owns the data folder)."""
        return await _operation(PullModel(_known(name)), wait)

    @router.post(
        "/v1/models/{name}/repair",
        tags=["models"],
        dependencies=guarded,
        status_code=status.HTTP_202_ACCEPTED,
    )
    async def repair_model(name: str, wait: WaitQuery = False) -> dict[str, Any]:
        """Quarantine the model's bad files and fetch (or rebuild) them."""
        return await _operation(RepairModel(_known(name)), wait)

    async def _operation(message: PullModel | RepairModel, wait: bool) -> dict[str, Any]:
        try:
            op = await _loader().ask(message, Operation, timeout=30.0)
        except (ModelStoreError, ActorNotRunning) as exc:
            raise _store_error(exc) from None
        if wait:
            return outcome_json(await op.result())
        return {"model": op.model, "operation": op.kind.value, "done": op.done}

    @router.post("/v1/models/{name}/verify", tags=["models"], dependencies=guarded)
    async def verify_model(
        name: str, deep: Annotated[bool, Query(description="also hash every file")] = False
    ) -> dict[str, Any]:
        """Check sizes and safetensors headers (and, deep, sha256) against the manifest."""
        try:
            op = await _loader().ask(VerifyModel(_known(name), deep=deep), Operation, timeout=30.0)
        except (ModelStoreError, ActorNotRunning) as exc:
            raise _store_error(exc) from None
        return outcome_json(await op.result())


def _store_error(exc: Exception) -> ApiError:
    code = getattr(exc, "code", ErrorCode.UNKNOWN_ERROR)
    remedy = getattr(exc, "remedy", "")
    return ApiError(
        status.HTTP_409_CONFLICT,
        code=code,
        title="The model store refused",
        message=str(exc),
        suggestions=[remedy] if remedy else [],
    )


def _what_it_takes(entry: ModelEntry) -> dict[str, Any]:
    """What a job for this model may start from, and the sizes it takes."""
    return {
        "description": entry.description,
        "modes": [mode.value for mode in entry.modes],
        "pipeline_class": entry.pipeline_class.value,
        "size_multiple": entry.size_multiple,
        "defaults": entry.defaults.model_dump(),
    }
