"""A job's model made available before it loads, as the decider says: verified by the model
loader; when it cannot be used, repaired (damaged files), else the registry's fallback when
allowed, else the job fails at load (`JobDecider.model_unavailable` decides; this carries out).

Invariant: nothing here outlives the job that asked. The generator runs it in a cancel scope, so
a cancel of a job waiting on a repair or a re-download answers at once (the loader's operation
goes on by itself; its result is for the next job that asks).
"""

from __future__ import annotations

from collections.abc import Callable

from actors.actor import Actor
from actors.generator import ModelChoice
from actors.model_loader import LoadFailed, Operation, ResolvedModel, ResolveModel
from actors.models.model_errors import ModelUnavailable
from supervisor.core.exceptions import ActorNotRunning
from supervisor.core.params import Mode
from supervisor.errors import ErrorCode
from supervisor.supervision.decisions import ModelStep
from supervisor.supervision.job_decider import JobDecider

__all__ = ["ModelResolver"]


class ModelResolver:
    """`await resolver(model, repair, mode)` → `ModelChoice`; the generator's `resolve_model`.

    `repair`: the attempt's plan asks for a repair first (a load of this model failed as
    damaged on the worker)."""

    def __init__(
        self, loader: Callable[[], Actor | None], decider: JobDecider, *, timeout: float = 120.0
    ) -> None:
        self._loader = loader
        self._decider = decider
        self._timeout = timeout

    async def __call__(self, model: str, repair: bool, mode: Mode = Mode.T2V) -> ModelChoice:
        loader = self._loader()
        if loader is None or not loader.running:
            raise ActorNotRunning(actor="model_loader")
        repaired = None
        if repair:
            await self._repair(loader, model, ErrorCode.MODEL_CORRUPTED)
            repaired = f"repaired the files of {model} after it failed to load"
        try:
            found = await self._ask(loader, ResolveModel(model))
        except ModelUnavailable as exc:
            # One decision per attempt: a model still unusable after its repair fails the job.
            match self._decider.model_unavailable(exc.code, repaired=repair):
                case ModelStep.REPAIR:
                    await self._repair(loader, model, exc.code)
                    repaired = f"repaired the files of {model} ({exc.reason}) before loading it"
                    found = await self._ask(loader, ResolveModel(model))
                case ModelStep.FALLBACK:
                    found = await self._ask(loader, ResolveModel(model, allow_fallback=True))
                    # A fallback that cannot start from what the job gives (an image) is no
                    # fallback for it: the job fails with its own model's reason.
                    if found.name != model and not found.entry.serves(mode):
                        raise
                case ModelStep.FAIL:
                    raise
        return ModelChoice(
            found.name, found.path, found.fallback_reason, repaired, found.entry.pipeline_class
        )

    async def _ask(self, loader: Actor, message: ResolveModel) -> ResolvedModel:
        return await loader.ask(message, ResolvedModel, timeout=self._timeout)

    async def _repair(self, loader: Actor, model: str, code: ErrorCode) -> None:
        op = await loader.ask(LoadFailed(model, code), Operation, timeout=30.0)
        outcome = await op.result()
        if not outcome.ok:
            raise ModelUnavailable(
                model=model,
                code=outcome.error_code or code,
                reason=f"the automatic repair failed: {outcome.message}",
                remedy=f"Run `genvisor models repair {model}`",
            )
