"""An in-process genvisor runtime over a fresh data directory, with its real worker process,
and a bus subscriber that records every event so a test can wait on what it expects."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from supervisor.bus import Event, EventBus
from supervisor.core.settings import load_settings
from supervisor.runtime import Runtime


class EventLog:
    """Every event of a bus, in order, with waits on conditions (no polling, no sleeps)."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = anyio.Event()

    async def follow(self, bus: EventBus, *, task_status: Any = anyio.TASK_STATUS_IGNORED) -> None:
        async with bus.subscribe(since=0, buffer=100_000) as sub:
            task_status.started()
            async for event in sub:
                self.events.append(event)
                self._changed.set()
                self._changed = anyio.Event()

    def of_type(self, type_: str) -> list[Event]:
        return [e for e in self.events if e.type.value == type_]

    def states(self) -> list[str]:
        return [e.data.to_state.value for e in self.of_type("supervisor.transition")]  # type: ignore[attr-defined]

    async def wait_for(
        self,
        condition: Callable[[], bool],
        what: str,
        limit: float = 120.0,  # noqa: ASYNC109 - a guard so a broken test fails, not hangs
    ) -> None:
        try:
            with anyio.fail_after(limit):
                while not condition():
                    await self._changed.wait()
        except TimeoutError:
            tail = [e.to_json()[:200] for e in self.events[-15:]]
            raise AssertionError(f"timed out waiting for {what}; last events: {tail}") from None

    async def wait_job(self, job_id: str, *types: str, limit: float = 120.0) -> Event:
        found: list[Event] = []

        def seen() -> bool:
            found[:] = [
                e
                for e in self.events
                if e.type.value in types and getattr(e.data, "job_id", None) == job_id
            ]
            return bool(found)

        await self.wait_for(seen, f"{types} for {job_id}", limit)
        return found[0]


def make_home(root: Path, tiny_model: Path) -> Path:
    home = root / "home"
    shutil.copytree(tiny_model, home / "models" / "tiny-wan")
    return home


@asynccontextmanager
async def running_runtime(
    home: Path, *, runtime_kwargs: dict[str, Any] | None = None, **overrides: Any
) -> AsyncIterator[tuple[Runtime, EventLog]]:
    """`runtime_kwargs` go to `Runtime` (e.g. a fake NVML), `overrides` to its settings."""
    settings = load_settings(overrides={"home": home, **overrides})
    runtime = Runtime(settings, **(runtime_kwargs or {}))
    log = EventLog()
    async with anyio.create_task_group() as tg:
        await tg.start(runtime.run)
        await tg.start(log.follow, runtime.bus)
        try:
            yield runtime, log
        finally:
            runtime.shutdown()
            await runtime.supervisor.finished()
            tg.cancel_scope.cancel()
