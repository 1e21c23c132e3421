"""The runtime's children: the model loader, the generator (with its worker process) and the
VRAM monitor, each built from the runtime's settings and parts, under OTP-style child specs."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

from actors.actor import Actor
from actors.generator import Generator
from actors.model_loader import ModelLoader
from actors.models.pull import HubAccess
from actors.models.registry import ModelRegistry
from actors.vram.pressure import PressureThresholds
from actors.vram_monitor import VramMonitor
from actors.worker.node_models import NodeModels
from actors.worker.ray_spawn import RaySpawner
from actors.worker.spawn import SpawnWorker, WorkerLaunch, spawn_worker
from supervisor.core.settings import Settings
from supervisor.runtime.device_parts import DeviceParts
from supervisor.supervision.child_spec import ChildSpec, RestartType

if TYPE_CHECKING:
    from supervisor.runtime.runtime import Runtime

__all__ = ["default_child_specs", "vram_monitor", "worker_launch", "worker_spawner"]


def _spec(settings: Settings, child_id: str, start: Callable[[], Actor], **kw: Any) -> ChildSpec:
    return ChildSpec(
        id=child_id,
        start=start,
        restart=RestartType.PERMANENT,
        max_restarts=settings.worker_max_restarts,
        period_s=settings.worker_restart_period,
        backoff_base_s=settings.restart_backoff_base,
        backoff_max_s=settings.restart_backoff_max,
        shutdown_timeout_s=settings.shutdown_timeout,
        **kw,
    )


def worker_launch(rt: Runtime, parts: DeviceParts | None = None) -> WorkerLaunch:
    """The worker of `parts`' device (the runtime's first, its only one by default)."""
    s = rt.settings
    parts = parts or rt.device_parts[0]
    return WorkerLaunch(
        log_path=s.home / "logs" / parts.log_name,
        device=parts.device,
        heartbeat_interval=s.heartbeat_interval,
        memory_limit=parts.memory_limit,
        ready_timeout=s.worker_start_timeout,
    )


def worker_spawner(settings: Settings, registry: ModelRegistry) -> SpawnWorker:
    """How this server starts its workers: child processes, or Ray actors (`executor`)."""
    if settings.executor == "local":
        return spawn_worker
    node_models = (
        NodeModels(tuple(registry.entries()), HubAccess.from_settings(settings))
        if settings.ray_model_cache == "node"
        else None
    )
    # Names unique per server on a shared cluster; a restarted worker gets the next serial.
    return RaySpawner(
        address=settings.ray_address,
        name_prefix=f"genvisor-{socket.gethostname()}-{os.getpid()}",
        node_models=node_models,
    )


def _generator(rt: Runtime, parts: DeviceParts) -> Generator:
    return Generator(
        launch=worker_launch(rt, parts),
        publish=rt.publish,
        report=rt.supervisor.tell_nowait,
        resolve_model=rt.resolve_model,
        on_worker=partial(rt.worker_changed, parts=parts),
        on_resolved=rt.model_resolved,
        stall_timeout=rt.settings.stall_timeout,
        cancel_grace=rt.settings.cancel_grace,
        spawn=rt.spawn_worker,
    )


def vram_monitor(rt: Runtime, parts: DeviceParts | None = None) -> VramMonitor:
    """The monitor of `parts`' device (the first's by default: the only one with one device)."""
    s = rt.settings
    first = parts is None or parts is rt.device_parts[0]
    parts = parts or rt.device_parts[0]
    return VramMonitor(
        rt.memory_source if first else None,
        publish=rt.publish if first else partial(rt.publish, parts=parts),
        device=parts.device,
        nvml=rt.nvml,
        sample_deadline=s.vram_sample_deadline,
        on_degraded=rt.telemetry_changed if first else partial(rt.telemetry_changed, parts=parts),
        cap=parts.accounting.cap,
        expect_gpu=s.expect_gpu,
        interval=s.vram_sample_interval,
        thresholds=PressureThresholds(s.pressure_warning, s.pressure_critical),
    )


def default_child_specs(rt: Runtime) -> list[ChildSpec]:
    s = rt.settings
    return [
        # One registry for the runtime and its loader (the API validates names against it).
        _spec(
            s,
            "model_loader",
            lambda: ModelLoader(s, publish=rt.bus.publish, registry=rt.registry),
        ),
        # One generator (worker) per device, each with its own restart intensity.
        *(_spec(s, p.child_id, partial(_generator, rt, p)) for p in rt.device_parts),
        _spec(s, "vram_monitor", lambda: vram_monitor(rt)),
        # Every GPU after the first is sampled by its own monitor.
        *(
            _spec(s, p.monitor_id, partial(vram_monitor, rt, p))
            for p in rt.device_parts[1:]
            if p.device != "cpu"
        ),
    ]
