"""Model loader actor: owns the model registry, the HF cache, downloads, verification, repair
and fallback. Every blocking step (file reads, hashing, HTTP) runs in a worker thread; pulls,
verifications and repairs run as background tasks of the actor, so `ListModels` and
`ResolveModel` answer while a 30 GB download is under way. One operation per model at a time:
asking again returns the running one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread

from actors.actor import Actor
from actors.models.availability import (
    AvailabilityReport,
    StoreState,
    check_availability,
    remedy,
)
from actors.models.fallback import find_fallback
from actors.models.manifest import read_manifest
from actors.models.model_errors import ModelStoreError, ModelUnavailable
from actors.models.pull import DownloadProgress, HubAccess, pull_model
from actors.models.registry import ModelEntry, ModelRegistry, ModelSource, load_registry
from actors.models.repair import repair_model
from actors.models.store import ModelStore, default_cache_dir
from actors.models.verify import VerifyReport, verify_model_dir
from supervisor.bus.events import (
    EventData,
    ModelAvailability,
    ModelDownloadProgress,
    ModelRepaired,
    ModelStatus,
    ModelVerified,
)
from supervisor.core.settings import CONFIG_DIR, Settings, load_settings
from supervisor.errors.categories import ErrorCode

__all__ = [
    "ListModels",
    "LoadFailed",
    "ModelList",
    "ModelLoader",
    "Operation",
    "OperationKind",
    "OperationOutcome",
    "PullModel",
    "RepairModel",
    "ResolveModel",
    "ResolvedModel",
    "VerifyModel",
]


# -- messages ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListModels:
    """Reply: ModelList."""


@dataclass(frozen=True, slots=True)
class PullModel:
    """Reply: Operation (await `.result()`)."""

    name: str


@dataclass(frozen=True, slots=True)
class VerifyModel:
    """Reply: Operation; its outcome carries the VerifyReport."""

    name: str
    deep: bool = False


@dataclass(frozen=True, slots=True)
class RepairModel:
    """Reply: Operation."""

    name: str


@dataclass(frozen=True, slots=True)
class ResolveModel:
    """Reply: ResolvedModel (the folder for `from_pretrained`), possibly a fallback; raises
    ModelUnavailable (with the command to run) when nothing usable is there."""

    name: str
    allow_fallback: bool = False


@dataclass(frozen=True, slots=True)
class LoadFailed:
    """The worker could not load the model. Reply: Operation (an automatic repair) when the
    code is MODEL.CORRUPTED/INCOMPLETE and repair is possible; otherwise ModelUnavailable."""

    name: str
    error_code: ErrorCode


class OperationKind(StrEnum):
    PULL = "pull"
    VERIFY = "verify"
    REPAIR = "repair"


@dataclass(frozen=True, slots=True)
class ModelList:
    models: list[AvailabilityReport]


@dataclass(frozen=True, slots=True)
class ResolvedModel:
    requested: str
    name: str
    path: Path
    entry: ModelEntry
    fallback_reason: str | None = None


@dataclass(frozen=True, slots=True)
class OperationOutcome:
    model: str
    kind: OperationKind
    ok: bool
    error_code: ErrorCode | None = None
    message: str = ""
    files: list[str] = field(default_factory=list)
    verify: VerifyReport | None = None


class Operation:
    """A running pull/verify/repair. Only the actor's task sets it, exactly once."""

    def __init__(self, model: str, kind: OperationKind) -> None:
        self.model = model
        self.kind = kind
        self._done = anyio.Event()
        self._outcome: OperationOutcome | None = None

    def finish(self, outcome: OperationOutcome) -> None:
        if self._outcome is None:
            self._outcome = outcome
            self._done.set()

    @property
    def done(self) -> bool:
        return self._outcome is not None

    async def result(self) -> OperationOutcome:
        await self._done.wait()
        assert self._outcome is not None
        return self._outcome


# -- the actor -----------------------------------------------------------------------------


def _default_registry(settings: Settings) -> ModelRegistry:
    return load_registry(CONFIG_DIR, [settings.models_file])


class ModelLoader(Actor):
    reply_errors = (ModelStoreError,)

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        publish: Callable[[EventData], object] | None = None,
        registry: ModelRegistry | None = None,
        access: HubAccess | None = None,
    ) -> None:
        super().__init__("model_loader")
        self.settings = settings if settings is not None else load_settings()
        self.registry = registry if registry is not None else _default_registry(self.settings)
        self.store = ModelStore(
            self.settings.home, self.settings.hf_cache_dir or default_cache_dir()
        )
        self.access = access if access is not None else HubAccess.from_settings(self.settings)
        self._publish = publish or (lambda _: None)
        self._availability: dict[str, AvailabilityReport] = {}
        self._operations: dict[str, Operation] = {}

    # -- lifecycle / facts -----------------------------------------------------------------

    async def on_start(self) -> None:
        await self._refresh_all()

    def describe(self) -> dict[str, Any]:
        models: dict[str, Any] = {}
        for name in self.registry.names():
            report = self._availability.get(name)
            op = self._operations.get(name)
            models[name] = {
                **(report.to_json() if report else {"state": "unknown"}),
                "operation": op.kind.value if op and not op.done else None,
            }
        return {"status": self.status.value, "models": models}

    # -- messages --------------------------------------------------------------------------

    async def handle(self, message: object) -> object:
        match message:
            case ListModels():
                return ModelList(await self._refresh_all())
            case PullModel(name=name):
                return self._start(name, OperationKind.PULL, self._pull)
            case VerifyModel(name=name, deep=deep):
                return self._start(name, OperationKind.VERIFY, lambda e, op: self._verify(e, deep))
            case RepairModel(name=name):
                return self._start(name, OperationKind.REPAIR, self._repair)
            case ResolveModel(name=name, allow_fallback=allow_fallback):
                return await self._resolve(name, allow_fallback)
            case LoadFailed(name=name, error_code=code):
                return await self._load_failed(name, code)
        raise TypeError(f"model_loader got an unknown message {message!r}")

    # -- availability ----------------------------------------------------------------------

    async def _check(self, entry: ModelEntry) -> AvailabilityReport:
        report = await anyio.to_thread.run_sync(check_availability, entry, self.store)
        previous = self._availability.get(entry.name)
        self._availability[entry.name] = report
        if previous is None or previous.state is not report.state:
            self._publish(ModelStatus(model=entry.name, availability=report.state.availability))
        return report

    async def _refresh_all(self) -> list[AvailabilityReport]:
        return [await self._check(entry) for entry in self.registry.entries()]

    def _remedy(self, entry: ModelEntry, state: StoreState) -> str:
        words = remedy(entry, state)
        return words[:1].upper() + words[1:]

    async def _resolve(self, name: str, allow_fallback: bool) -> ResolvedModel:
        entry = self.registry.get(name)
        report = await self._check(entry)
        if report.state is StoreState.PRESENT and report.path is not None:
            return ResolvedModel(requested=name, name=name, path=report.path, entry=entry)
        code = report.state.error_code or ErrorCode.MODEL_NOT_FOUND
        reason = f"{report.state.value}" + (f": {report.problems[0]}" if report.problems else "")
        if allow_fallback:
            return await self._fallback_or_raise(name, reason, code)
        raise ModelUnavailable(
            model=name, code=code, reason=reason, remedy=self._remedy(entry, report.state)
        )

    async def _fallback_or_raise(self, name: str, reason: str, code: ErrorCode) -> ResolvedModel:
        usable = {r.name for r in await self._refresh_all() if r.state is StoreState.PRESENT}
        offer = find_fallback(self.registry, name, reason, usable.__contains__)
        if offer is None:
            entry = self.registry.get(name)
            state = self._availability[name].state
            raise ModelUnavailable(
                model=name,
                code=code,
                reason=f"{reason}; no usable fallback",
                remedy=self._remedy(entry, state),
            )
        fallback = self._availability[offer.model]
        assert fallback.path is not None
        return ResolvedModel(
            requested=name,
            name=offer.model,
            path=fallback.path,
            entry=self.registry.get(offer.model),
            fallback_reason=f"{name} unavailable ({reason}); using {offer.model}",
        )

    async def _load_failed(self, name: str, code: ErrorCode) -> Operation:
        entry = self.registry.get(name)
        repairable = code in (ErrorCode.MODEL_CORRUPTED, ErrorCode.MODEL_INCOMPLETE)
        can_fix = entry.source is ModelSource.LOCAL or self.settings.allow_downloads
        if repairable and can_fix:
            # The load itself failed: a local build is rebuilt even when its weights verify,
            # because what broke may be a file verification does not cover (a config).
            return self._start(
                name, OperationKind.REPAIR, lambda e, op: self._repair(e, op, force=True)
            )
        raise ModelUnavailable(
            model=name,
            code=code,
            reason="loading failed" + ("" if can_fix else " and downloads are disabled"),
            remedy=f"Run `genvisor models repair {name}`",
        )

    # -- operations ------------------------------------------------------------------------

    def _start(
        self,
        name: str,
        kind: OperationKind,
        work: Callable[[ModelEntry, Operation], Any],
    ) -> Operation:
        entry = self.registry.get(name)
        running = self._operations.get(name)
        if running is not None and not running.done:
            return running
        op = Operation(name, kind)
        self._operations[name] = op

        async def run() -> None:
            try:
                outcome: OperationOutcome = await work(entry, op)
            except ModelStoreError as exc:
                outcome = OperationOutcome(name, kind, False, exc.code, str(exc))
                self._publish(ModelStatus(model=name, availability=ModelAvailability.UNAVAILABLE))
            except BaseException as exc:
                op.finish(OperationOutcome(name, kind, False, ErrorCode.UNKNOWN_ERROR, repr(exc)))
                raise
            # The availability is fresh before anyone waiting on the operation wakes up.
            await self._check(entry)
            op.finish(outcome)

        self.spawn(run, name=f"model_loader.{kind.value}.{name}")
        return op

    def _progress_sink(self) -> Callable[[DownloadProgress], None]:
        def sink(p: DownloadProgress) -> None:
            event = ModelDownloadProgress(
                model=p.model,
                file=p.file,
                file_bytes=p.file_bytes,
                file_total=p.file_total,
                bytes=p.bytes,
                total=p.total,
            )
            anyio.from_thread.run_sync(self._publish, event)

        return sink

    async def _pull(self, entry: ModelEntry, op: Operation) -> OperationOutcome:
        if entry.source is ModelSource.LOCAL:
            return await self._repair(entry, op)
        if not self.settings.allow_downloads:
            raise ModelUnavailable(
                model=entry.name,
                code=ErrorCode.MODEL_NOT_FOUND,
                reason="downloads are disabled (allow_downloads = false)",
                remedy="Set allow_downloads = true (GENVISOR_ALLOW_DOWNLOADS=1) to pull it",
            )
        self._publish(ModelStatus(model=entry.name, availability=ModelAvailability.DOWNLOADING))
        result = await anyio.to_thread.run_sync(
            pull_model, entry, self.store, self.access, self._progress_sink()
        )
        return OperationOutcome(entry.name, op.kind, True, files=result.downloaded)

    async def _verify(self, entry: ModelEntry, deep: bool) -> OperationOutcome:
        self._publish(ModelStatus(model=entry.name, availability=ModelAvailability.VERIFYING))

        def run() -> VerifyReport:
            manifest = read_manifest(self.store.home, entry.name)
            return verify_model_dir(self.store.model_dir(entry, manifest), manifest, deep=deep)

        report = await anyio.to_thread.run_sync(run)
        problems = [str(p) for p in report.problems]
        self._publish(ModelVerified(model=entry.name, ok=report.ok, problems=problems))
        code = None
        if not report.ok:
            code = (
                ErrorCode.MODEL_INCOMPLETE
                if all(p.kind.incomplete for p in report.problems)
                else ErrorCode.MODEL_CORRUPTED
            )
        return OperationOutcome(
            entry.name, OperationKind.VERIFY, report.ok, code, "; ".join(problems),
            files=report.bad_files, verify=report,
        )  # fmt: skip

    async def _repair(
        self, entry: ModelEntry, op: Operation, *, force: bool = False
    ) -> OperationOutcome:
        self._publish(ModelStatus(model=entry.name, availability=ModelAvailability.REPAIRING))
        result = await anyio.to_thread.run_sync(
            lambda: repair_model(
                entry,
                self.store,
                self.access,
                self._progress_sink(),
                allow_downloads=self.settings.allow_downloads,
                force=force,
            )
        )
        self._publish(ModelRepaired(model=entry.name, files=result.repaired))
        return OperationOutcome(entry.name, op.kind, True, files=result.repaired)
