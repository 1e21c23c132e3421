"""The supervisor with real actors: restarts, intensity, halt, reset, shutdown."""

from __future__ import annotations

import anyio
import pytest

from actors.actor import Actor
from supervisor.bus import events as ev
from supervisor.core.exceptions import ActorCrashedError, InvalidTransition
from supervisor.supervision.child_spec import ChildSpec, RestartType
from supervisor.supervision.messages import Reset
from supervisor.supervision.state_machine import State
from supervisor.supervision.supervisor import Supervisor
from tests.event_recorder import EventRecorder

pytestmark = pytest.mark.anyio


class Crashy(Actor):
    """A real actor whose 'crash' message raises inside its handler."""

    starts = 0

    def __init__(self) -> None:
        super().__init__("crashy")
        Crashy.starts += 1

    async def handle(self, message: object) -> object:
        if message == "crash":
            raise RuntimeError("boom")
        return f"pong {message}"


class Quiet(Actor):
    stopped = 0

    async def handle(self, message: object) -> object:
        return message

    async def on_stop(self) -> None:
        Quiet.stopped += 1


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _specs(max_restarts: int = 3) -> list[ChildSpec]:
    return [
        ChildSpec(id="quiet", start=lambda: Quiet("quiet")),
        ChildSpec(
            id="crashy",
            start=Crashy,
            max_restarts=max_restarts,
            period_s=60.0,
            backoff_base_s=0.001,
            backoff_max_s=0.01,
        ),
    ]


async def _crash(sup: Supervisor) -> None:
    child = sup.child("crashy")
    assert child is not None
    with pytest.raises(ActorCrashedError):
        await child.ask("crash", str, timeout=5)


async def test_restart_intensity_halt_and_reset() -> None:
    rec, clock = EventRecorder(), ManualClock()
    sup = Supervisor(_specs(), publish=rec.publish, clock=clock)
    Crashy.starts = 0
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        assert await sup.wait_settled() is State.READY
        for k in range(1, 4):
            clock.now += 1
            await _crash(sup)
            await rec.wait_state("ready", count=k + 1)
            assert await sup.wait_settled() is State.READY
            assert Crashy.starts == k + 1
            child = sup.child("crashy")
            assert child is not None
            assert await child.ask("hi", str) == "pong hi"
        restarted = [e for e in rec.events if isinstance(e, ev.ActorRestarted)]
        assert [e.restarts_in_window for e in restarted] == [1, 2, 3]
        assert restarted[0].delay_s <= restarted[2].delay_s  # backoff grows (jitter aside)

        clock.now += 1
        await _crash(sup)  # the fourth within the period
        await rec.wait_state("halted")
        assert sup.state is State.HALTED
        snap = sup.snapshot().as_dict()
        crashy = next(c for c in snap["children"] if c["id"] == "crashy")
        assert crashy["state"] == "failed"
        assert crashy["last_error"]["message"] == "boom"
        assert "4 times within 60 s" in snap["history"][-1]["reason"]
        assert Crashy.starts == 4  # not restarted once halted

        assert await sup.ask(Reset(), State) in (State.STARTING, State.READY)
        assert await sup.wait_settled() is State.READY
        assert Crashy.starts == 5
        sup.stop()
    assert sup.state is State.STOPPED
    walk = rec.states()
    assert walk[:1] == ["ready"]
    assert walk[1:5] == ["failed", "categorizing", "recovering", "ready"]
    assert walk[-4:] == ["starting", "ready", "stopping", "stopped"]


async def test_crash_outside_window_is_forgiven() -> None:
    rec, clock = EventRecorder(), ManualClock()
    sup = Supervisor(_specs(max_restarts=1), publish=rec.publish, clock=clock)
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        await sup.wait_settled()
        await _crash(sup)
        await rec.wait_state("ready", count=2)
        clock.now += 61  # the first crash leaves the window
        await _crash(sup)
        await rec.wait_state("ready", count=3)
        assert sup.state is State.READY
        sup.stop()


async def test_reset_when_not_halted_is_invalid() -> None:
    rec = EventRecorder()
    sup = Supervisor(_specs(), publish=rec.publish)
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        await sup.wait_settled()
        with pytest.raises(InvalidTransition) as info:
            await sup.ask(Reset(), State)
        assert info.value.state == "ready"
        sup.stop()


async def test_temporary_child_is_not_restarted() -> None:
    rec = EventRecorder()
    specs = [ChildSpec(id="crashy", start=Crashy, restart=RestartType.TEMPORARY)]
    sup = Supervisor(specs, publish=rec.publish)
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        await sup.wait_settled()
        await _crash(sup)
        await rec.wait_state("ready", count=2)
        assert sup.snapshot().children[0]["state"] == "stopped"
        sup.stop()


class Stubborn(Actor):
    """Ignores stop: its handler blocks until cancelled, to test the shutdown timeout."""

    async def handle(self, message: object) -> object:
        await anyio.sleep_forever()
        return None


async def test_shutdown_cancels_a_child_past_its_timeout() -> None:
    rec = EventRecorder()
    Quiet.stopped = 0
    specs = [
        ChildSpec(id="quiet", start=lambda: Quiet("quiet")),
        ChildSpec(id="stubborn", start=lambda: Stubborn("stubborn"), shutdown_timeout_s=0.05),
    ]
    sup = Supervisor(specs, publish=rec.publish)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await tg.start(sup.run)
            await sup.wait_settled()
            stubborn = sup.child("stubborn")
            assert stubborn is not None
            stubborn.tell_nowait("block")
            await anyio.wait_all_tasks_blocked()
            sup.stop()
    assert sup.state is State.STOPPED
    assert Quiet.stopped == 1
    stopped = [e.actor for e in rec.events if isinstance(e, ev.ActorStopped)]
    assert stopped == ["stubborn", "quiet"]  # reverse start order


async def test_a_child_factory_that_raises_is_a_failed_start_not_a_dead_supervisor() -> None:
    rec = EventRecorder()
    attempts: list[int] = []

    def broken() -> Actor:
        attempts.append(len(attempts))
        raise OSError(28, "No space left on device")

    specs = [
        ChildSpec(id="quiet", start=lambda: Quiet("quiet")),
        ChildSpec(
            id="broken",
            start=broken,
            max_restarts=2,
            period_s=60.0,
            backoff_base_s=0.001,
            backoff_max_s=0.01,
        ),  # fmt: skip
    ]
    sup = Supervisor(specs, publish=rec.publish)
    async with anyio.create_task_group() as tg:
        await tg.start(sup.run)
        with anyio.fail_after(30):
            await rec.wait_state("halted")
        assert sup.running  # the supervisor itself goes on: it answers, it can be reset
        assert len(attempts) == 3  # the first start and its two restarts
        snap = sup.snapshot().as_dict()
        broken_child = next(c for c in snap["children"] if c["id"] == "broken")
        assert broken_child["state"] == "failed"
        assert "No space left on device" in broken_child["last_error"]["message"]
        quiet = sup.child("quiet")
        assert quiet is not None
        assert await quiet.ask("still here", str) == "still here"
        sup.stop()
    assert sup.state is State.STOPPED
