"""A publish target for tests: records events and lets a test wait for a condition on them."""

from __future__ import annotations

from collections.abc import Callable

import anyio

from supervisor.bus import events as ev


class EventRecorder:
    def __init__(self) -> None:
        self.events: list[ev.EventData] = []
        self._changed: anyio.Event | None = None

    def publish(self, data: ev.EventData) -> None:
        self.events.append(data)
        if self._changed is not None:
            self._changed.set()

    def states(self) -> list[str]:
        return [e.to_state.value for e in self.events if isinstance(e, ev.SupervisorTransition)]

    # The timeout is a guard so that a broken test fails instead of hanging.
    async def wait_for(
        self,
        condition: Callable[[list[ev.EventData]], bool],
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> None:
        with anyio.fail_after(timeout):
            while not condition(self.events):
                self._changed = anyio.Event()
                await self._changed.wait()

    async def wait_state(
        self,
        state: str,
        *,
        count: int = 1,
        timeout: float = 10.0,  # noqa: ASYNC109
    ) -> None:
        await self.wait_for(lambda _: self.states().count(state) >= count, timeout)
