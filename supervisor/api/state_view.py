"""What the API shows of a runtime: a job's view, readiness and the state dump.

Pure reads of the runtime's parts, kept out of the composition root so that what a person sees
is decided in one place (`/readyz`, `/v1/state` and `genvisor state` agree by construction).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any

from supervisor import __version__
from supervisor.core.states import SERVING_STATES
from supervisor.core.store_health import StoreCorrupted, tolerate
from supervisor.jobs import Job
from supervisor.recovery.learned_strategies import LearnedStrategy
from supervisor.runtime import HEAVY_MODULES, Runtime

__all__ = ["job_view", "readiness", "state_dump"]


async def job_view(runtime: Runtime, job: Job) -> dict[str, Any]:
    view = job.public()
    view["queue_position"] = await runtime.store.queue_position(job.id)
    running = runtime.jobs.running_job(job.id)
    if running is not None:
        view["progress"] = {
            "stage": running.stage,
            "step": running.step,
            "total_steps": running.total_steps,
        }
    return view


def readiness(runtime: Runtime) -> dict[str, Any]:
    """Whether the service can take and run jobs now, and every reason it cannot: the
    supervisor's loop, its state, each child, the bus and the stores (the truth behind
    `/readyz` and `genvisor state`)."""
    snap = runtime.supervisor.snapshot()
    reasons: list[str] = []
    if not runtime.supervisor.running:
        reasons.append("the supervisor is not running")
    if snap.state not in SERVING_STATES:
        reasons.append(f"the supervisor is {snap.state.value}")
    for child in snap.children:
        # A device out of service is a degraded reason; the other devices serve.
        lane = runtime.jobs.lane_of_child(str(child["id"]))
        if lane is not None and not lane.in_service and runtime.jobs.placing:
            continue
        if child["state"] != "running":
            reasons.append(f"{child['id']} is {child['state']}")
    if runtime.bus.closed:
        reasons.append("the event bus is closed")
    for _, store in runtime.stores():
        damage: StoreCorrupted | None = getattr(store, "damage", None)
        if damage is not None:
            reasons.append(f"{damage} (it heals at the next start)")
    return {
        "ready": not reasons,
        "state": snap.state.value,
        "reasons": reasons,
        "degraded_reasons": snap.degraded_reasons,
    }


async def state_dump(runtime: Runtime) -> dict[str, Any]:
    dump = runtime.supervisor.snapshot().as_dict()
    dump["readiness"] = readiness(runtime)
    dump["bus"] = dataclasses.asdict(runtime.bus.stats)
    counts = await runtime.store.counts()
    dump["queue"] = {
        "waiting": await runtime.store.waiting(),
        "running": runtime.jobs.running.id if runtime.jobs.running else None,
        **{k: v for k, v in counts.items() if v},
    }
    if runtime.jobs.placing:
        dump["queue"]["running_on"] = {d: j.id for d, j in runtime.jobs.running_jobs().items()}
    dump["devices"] = [
        {
            "device": parts.label,
            "worker": parts.child_id,
            "runs_on": parts.device,
            "name": parts.resolved.name,
            "memory_limit": parts.memory_limit or None,
            "in_service": lane.in_service if lane is not None else True,
            "running": lane.running.id if lane is not None and lane.running else None,
        }
        for parts in runtime.device_parts
        for lane in [runtime.jobs.lane_of_child(parts.child_id)]
    ]
    dump["version"] = __version__
    none: list[LearnedStrategy] = []
    learned = tolerate(runtime.strategies.all, none, what="learned strategies")
    dump["learned_strategies"] = [
        {
            "model": s.key.model,
            "device": s.key.device,
            "memory_mib": s.key.memory_mib,
            "size_bucket": s.key.bucket,
            "rung": s.rung.value,
            "successes": s.successes,
        }
        for s in learned
    ]
    dump["pid"] = os.getpid()
    # Invariant under test: the control process never imports the heavy libraries.
    dump["heavy_modules_loaded"] = sorted(m for m in HEAVY_MODULES if m in sys.modules)
    return dump
