"""Every walk of the supervisor's state machine, and that invalid triggers raise."""

from __future__ import annotations

import pytest

from supervisor.core.exceptions import InvalidTransition
from supervisor.supervision.state_machine import (
    TRANSITIONS,
    State,
    StateMachine,
    TransitionRecord,
    Trigger,
    mermaid_diagram,
)

S, T = State, Trigger

WALKS: dict[str, list[tuple[Trigger, State]]] = {
    "boot": [(T.STARTED, S.READY)],
    "boot degraded, then restored": [(T.STARTED_DEGRADED, S.DEGRADED), (T.RESTORE, S.READY)],
    "crash recovered": [
        (T.STARTED, S.READY),
        (T.FAIL, S.FAILED),
        (T.CATEGORIZE, S.CATEGORIZING),
        (T.PLAN, S.RECOVERING),
        (T.RECOVERED, S.READY),
    ],
    "recovery with reduced capability": [
        (T.STARTED, S.READY),
        (T.FAIL, S.FAILED),
        (T.CATEGORIZE, S.CATEGORIZING),
        (T.PLAN, S.RECOVERING),
        (T.RECOVERED_DEGRADED, S.DEGRADED),
        (T.RESTORE, S.READY),
    ],
    "the job's own fault": [
        (T.STARTED, S.READY),
        (T.FAIL, S.FAILED),
        (T.CATEGORIZE, S.CATEGORIZING),
        (T.DISMISS, S.READY),
    ],
    "the job's own fault while degraded": [
        (T.STARTED_DEGRADED, S.DEGRADED),
        (T.FAIL, S.FAILED),
        (T.CATEGORIZE, S.CATEGORIZING),
        (T.DISMISS_DEGRADED, S.DEGRADED),
    ],
    "nothing to try": [
        (T.STARTED, S.READY),
        (T.FAIL, S.FAILED),
        (T.CATEGORIZE, S.CATEGORIZING),
        (T.GIVE_UP, S.HALTED),
        (T.RESET, S.STARTING),
        (T.STARTED, S.READY),
    ],
    "failure during recovery, then halt": [
        (T.STARTED, S.READY),
        (T.FAIL, S.FAILED),
        (T.CATEGORIZE, S.CATEGORIZING),
        (T.PLAN, S.RECOVERING),
        (T.FAIL, S.FAILED),
        (T.CATEGORIZE, S.CATEGORIZING),
        (T.PLAN, S.RECOVERING),
        (T.GIVE_UP, S.HALTED),
    ],
    "failure while starting": [
        (T.FAIL, S.FAILED),
        (T.CATEGORIZE, S.CATEGORIZING),
        (T.PLAN, S.RECOVERING),
        (T.RECOVERED, S.READY),
    ],
    "degrade at run time": [(T.STARTED, S.READY), (T.DEGRADE, S.DEGRADED), (T.RESTORE, S.READY)],
    "shutdown": [(T.STARTED, S.READY), (T.STOP, S.STOPPING), (T.STOPPED, S.STOPPED)],
    "shutdown while halted": [
        (T.GIVE_UP, S.HALTED),
        (T.STOP, S.STOPPING),
        (T.STOPPED, S.STOPPED),
    ],
}


@pytest.mark.parametrize("walk", list(WALKS), ids=list(WALKS))
def test_walk(walk: str) -> None:
    seen: list[TransitionRecord] = []
    clock = iter(range(1000))
    machine = StateMachine(clock=lambda: float(next(clock)), on_transition=seen.append)
    assert machine.state is S.STARTING
    for trigger, expected in WALKS[walk]:
        before = machine.state
        record = machine.fire(trigger, reason=f"test {trigger}", error_code="TEST.CODE")
        assert machine.state is expected
        assert (record.from_state, record.to_state, record.trigger) == (before, expected, trigger)
        assert record.reason == f"test {trigger}"
        assert record.error_code == "TEST.CODE"
    assert [r.to_state for r in seen] == [e for _, e in WALKS[walk]]
    assert list(machine.history) == seen
    assert machine.since == seen[-1].ts


def test_every_declared_transition_is_walked() -> None:
    walked = set()
    for steps in WALKS.values():
        machine = StateMachine()
        for trigger, _ in steps:
            before = machine.state
            machine.fire(trigger)
            walked.add((trigger, before))
    declared = {(t, s) for t, sources, _ in TRANSITIONS for s in sources}
    # STOP is declared from every live state; one shutdown walk per state would only repeat.
    missing = {(t, s) for t, s in declared - walked if t is not T.STOP}
    assert missing == set()


def _allowed(state: State) -> set[Trigger]:
    return {t for t, sources, _ in TRANSITIONS if state in sources}


@pytest.mark.parametrize("state", list(State))
def test_invalid_triggers_raise(state: State) -> None:
    for trigger in set(Trigger) - _allowed(state):
        machine = StateMachine()
        _drive_to(machine, state)
        with pytest.raises(InvalidTransition) as info:
            machine.fire(trigger)
        assert info.value.state == state.value
        assert info.value.trigger == trigger.value
        assert machine.state is state  # an invalid trigger changes nothing


def _drive_to(machine: StateMachine, target: State) -> None:
    paths = {
        S.STARTING: [],
        S.READY: [T.STARTED],
        S.FAILED: [T.FAIL],
        S.CATEGORIZING: [T.FAIL, T.CATEGORIZE],
        S.RECOVERING: [T.FAIL, T.CATEGORIZE, T.PLAN],
        S.DEGRADED: [T.STARTED_DEGRADED],
        S.HALTED: [T.GIVE_UP],
        S.STOPPING: [T.STOP],
        S.STOPPED: [T.STOP, T.STOPPED],
    }
    for trigger in paths[target]:
        machine.fire(trigger)
    assert machine.state is target


def test_history_is_bounded() -> None:
    machine = StateMachine(history_size=10)
    machine.fire(T.STARTED)
    for _ in range(20):
        machine.fire(T.DEGRADE)
        machine.fire(T.RESTORE)
    assert len(machine.history) == 10
    assert machine.history[-1].to_state is S.READY


def test_mermaid_marks_current_state() -> None:
    text = mermaid_diagram(S.DEGRADED)
    assert "stateDiagram-v2" in text
    assert "degraded s_active" in text
    assert "[*] --> starting" in text
    assert "halted --> starting: reset" in text
