"""What the runtime does once at start: finished jobs past retention purged, jobs a killed
server left running queued again, and what start-up found told to the supervisor."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import anyio

from supervisor.bus import events as ev
from supervisor.core.store_health import StoreHealReport
from supervisor.supervision.messages import Degrade

if TYPE_CHECKING:
    from supervisor.runtime.runtime import Runtime

__all__ = ["TELEMETRY_KEY", "degrade_for_start_findings", "purge_old_jobs", "resume_interrupted"]

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
