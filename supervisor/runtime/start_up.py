"""What the runtime does once at start: finished jobs past retention purged, jobs a killed
server left running queued again, and what start-up found told to the supervisor."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import anyio

from actors.models.availability import StoreState, check_availability, remedy
from actors.models.model_errors import ModelUnavailable
from actors.models.registry import ModelRegistry, ModelSource, load_registry
from actors.models.repair import rebuild_local
from actors.models.store import ModelStore, default_cache_dir
from supervisor.bus import events as ev
from supervisor.core.exceptions import ActorNotRunning, GenvisorError, MailboxFull
from supervisor.core.settings import CONFIG_DIR, Settings
from supervisor.core.store_health import StoreHealReport
from supervisor.supervision.messages import Degrade

if TYPE_CHECKING:
    from supervisor.runtime.runtime import Runtime

__all__ = [
    "TELEMETRY_KEY",
    "build_default_model_if_missing",
    "default_model_problem",
    "degrade_for_start_findings",
    "degrade_if_default_model_cannot_run",
    "learn_local_weights",
    "purge_old_jobs",
    "resume_interrupted",
]

log = logging.getLogger("genvisor.runtime")

# The degraded reason of device telemetry that stopped answering (see VramMonitor).
TELEMETRY_KEY = "vram_telemetry"


async def purge_old_jobs(rt: Runtime) -> None:
    """Finished jobs (and their files) older than the retention setting are removed."""
    cutoff_s = rt.settings.job_retention_days * 86400
    for job in await rt.store.finished_before(time.time() - cutoff_s):
        for path in rt.output_dir.glob(f"{job.id}.*"):
            path.unlink(missing_ok=True)
    removed = await rt.store.purge_finished(cutoff_s)
    if removed:
        log.info(
            "removed %d finished jobs older than %g days",
            removed,
            rt.settings.job_retention_days,
        )
    keep = await rt.store.input_ids()
    gone = await anyio.to_thread.run_sync(rt.inputs.remove_unused, keep, time.time() - cutoff_s)
    if gone:
        log.info("removed %d uploaded inputs no kept job uses", len(gone))


def _model_store(settings: Settings) -> ModelStore:
    return ModelStore(settings.home, settings.hf_cache_dir or default_cache_dir())


def default_model_problem(settings: Settings, registry: ModelRegistry) -> str | None:
    """Why the default model cannot run here, with the command that fixes it; None when it can
    (or when it is not a registered model: the settings check says that). Blocking (file
    reads, no hashes): call it from a thread in the event loop's process."""
    name = settings.default_model
    if name not in registry:
        return None
    entry = registry.get(name)
    report = check_availability(entry, _model_store(settings))
    if report.state is StoreState.PRESENT:
        return None
    if report.state is StoreState.MISSING:
        local = entry.source is ModelSource.LOCAL
        why = "it is not built here" if local else "it was never downloaded here"
    else:
        detail = f": {report.problems[0]}" if report.problems else ""
        why = f"its files are {report.state.value}{detail}"
    return f"the default model {name} cannot run: {why}; {remedy(entry, report.state)}"


def build_default_model_if_missing(settings: Settings) -> str | None:
    """`genvisor serve` in a fresh home: a default model that is a local tiny build (tiny-wan)
    and is missing is built now (a few seconds, in a child process: the builder imports torch).
    Returns what was built (a sentence for the log), None when nothing was to do. A failed build
    raises `ModelUnavailable`; the server then starts degraded with that reason."""
    registry = load_registry(CONFIG_DIR, [settings.models_file])
    name = settings.default_model
    if name not in registry:
        return None
    entry = registry.get(name)
    if entry.source is not ModelSource.LOCAL:
        return None
    store = _model_store(settings)
    if check_availability(entry, store).state is not StoreState.MISSING:
        return None  # present, or damaged: a repair's business, never overwritten here
    log.info("building the default model %s here (first start; a few seconds)", name)
    started = time.monotonic()
    out = rebuild_local(entry, store)
    return f"built the default model {name} in {time.monotonic() - started:.1f} s: {out}"


async def degrade_if_default_model_cannot_run(rt: Runtime) -> None:
    """`genvisor serve` is never READY with a default model that cannot run: once the
    supervisor has settled, such a model is a degraded reason (with the command that fixes it)
    until a job of it succeeds, as for a model that stopped loading."""
    await rt.supervisor.wait_settled()
    try:
        problem = await anyio.to_thread.run_sync(default_model_problem, rt.settings, rt.registry)
    except (OSError, ModelUnavailable, ValueError) as exc:
        problem = f"the default model {rt.settings.default_model} could not be checked: {exc}"
    if problem:
        log.warning("%s", problem)
        try:
            rt.supervisor.tell_nowait(Degrade(f"model:{rt.settings.default_model}", problem))
        except (ActorNotRunning, MailboxFull):
            log.warning("the supervisor was not told (it is not running)")


async def degrade_for_start_findings(rt: Runtime) -> None:
    """What start-up found that serving cannot undo is a degraded reason: a GPU expected
    but absent (the VRAM monitor says), a store rebuilt from a damaged file (until the
    next start: the damaged copy is kept aside for a person to look at)."""
    await rt.supervisor.wait_settled()
    monitor = rt.supervisor.child("vram_monitor")
    reason = getattr(monitor, "degraded_reason", None)
    if reason:
        rt.supervisor.tell_nowait(Degrade("gpu", reason))
    wedged = getattr(monitor, "wedged", None)
    if wedged:  # told before the supervisor settled: said again now that it can act on it
        rt.supervisor.tell_nowait(Degrade(TELEMETRY_KEY, wedged))
    for name, store in rt.stores():
        report: StoreHealReport | None = store.heal_report
        if report is not None:
            log.warning("%s", report.reason())
            rt.supervisor.tell_nowait(Degrade(f"store:{name}", report.reason()))


async def resume_interrupted(rt: Runtime) -> None:
    """Jobs a killed server left running go back to the queue, in their order."""
    for job in await rt.store.recover_interrupted():
        log.warning("job %s was interrupted by a server stop: queued again", job.id)
        position = await rt.store.queue_position(job.id)
        rt.bus.publish(ev.JobQueued(job_id=job.id, position=position or 0))


async def learn_local_weights(rt: Runtime) -> None:
    """Every model already in the store has its weights read (safetensors headers) at start,
    so that a server's first job of it is pre-flighted like the next ones (before, the weights
    became known only when a job had resolved the model, after its own pre-flight)."""
    store = _model_store(rt.settings)
    for entry in rt.registry.entries():
        # Invariant: this is a head start, never a reason to stop: a folder that can not be
        # read now is read again when a job resolves the model, as before.
        try:
            report = await anyio.to_thread.run_sync(check_availability, entry, store)
            if report.state is StoreState.PRESENT and report.path is not None:
                await rt.model_resolved(entry.name, report.path)
        except (OSError, ValueError, GenvisorError) as exc:
            log.warning("weights of %s not read at start: %s", entry.name, exc)
