"""The supervisor's explicit state machine.

A thin, typed layer over `transitions.Machine` (the synchronous one, `auto_transitions=False`).
Invariant: only the supervisor's own loop calls `fire`, one trigger at a time, so the machine
never sees concurrent triggers and needs no lock.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from transitions import Machine, MachineError

from supervisor.core.exceptions import InvalidTransition
from supervisor.core.states import State, Trigger

__all__ = [
    "TRANSITIONS",
    "State",
    "StateMachine",
    "TransitionRecord",
    "Trigger",
    "mermaid_diagram",
]


S, T = State, Trigger

# (trigger, sources, destination). The whole graph of DESIGN.md, nothing implicit.
TRANSITIONS: tuple[tuple[Trigger, tuple[State, ...], State], ...] = (
    (T.STARTED, (S.STARTING,), S.READY),
    (T.STARTED_DEGRADED, (S.STARTING,), S.DEGRADED),
    (T.FAIL, (S.STARTING, S.READY, S.DEGRADED, S.RECOVERING), S.FAILED),
    (T.CATEGORIZE, (S.FAILED,), S.CATEGORIZING),
    (T.PLAN, (S.CATEGORIZING,), S.RECOVERING),
    (T.DISMISS, (S.CATEGORIZING,), S.READY),
    (T.DISMISS_DEGRADED, (S.CATEGORIZING,), S.DEGRADED),
    (T.RECOVERED, (S.RECOVERING,), S.READY),
    (T.RECOVERED_DEGRADED, (S.RECOVERING,), S.DEGRADED),
    (T.GIVE_UP, (S.CATEGORIZING, S.RECOVERING, S.STARTING), S.HALTED),
    (T.DEGRADE, (S.READY,), S.DEGRADED),
    (T.RESTORE, (S.DEGRADED,), S.READY),
    (T.RESET, (S.HALTED,), S.STARTING),
    (
        T.STOP,
        (S.STARTING, S.READY, S.FAILED, S.CATEGORIZING, S.RECOVERING, S.DEGRADED, S.HALTED),
        S.STOPPING,
    ),
    (T.STOPPED, (S.STOPPING,), S.STOPPED),
)


@dataclass(frozen=True, slots=True)
class TransitionRecord:
    from_state: State
    to_state: State
    trigger: Trigger
    reason: str
    error_code: str | None
    ts: float

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["from_state"] = self.from_state.value
        data["to_state"] = self.to_state.value
        data["trigger"] = self.trigger.value
        return data


class _Model:
    """The object `transitions` decorates; it holds nothing but `state`."""

    state: str


def _machine_kwargs() -> dict[str, Any]:
    return {
        "states": [s.value for s in State],
        "transitions": [
            {"trigger": t.value, "source": [s.value for s in src], "dest": dst.value}
            for t, src, dst in TRANSITIONS
        ],
        "auto_transitions": False,
        "ignore_invalid_triggers": False,
    }


class StateMachine:
    """Current state, the allowed walks, and a bounded history of transitions."""

    def __init__(
        self,
        *,
        history_size: int = 200,
        clock: Callable[[], float] = time.time,
        on_transition: Callable[[TransitionRecord], None] | None = None,
    ) -> None:
        self._model = _Model()
        self._machine = Machine(
            model=self._model, initial=State.STARTING.value, **_machine_kwargs()
        )
        self._clock = clock
        self._on_transition = on_transition
        self.history: deque[TransitionRecord] = deque(maxlen=history_size)
        self.since: float = clock()

    @property
    def state(self) -> State:
        return State(self._model.state)

    def fire(
        self, trigger: Trigger, *, reason: str = "", error_code: str | None = None
    ) -> TransitionRecord:
        """Apply `trigger`; raise InvalidTransition when the current state does not allow it."""
        before = self.state
        try:
            self._model.trigger(trigger.value)  # type: ignore[attr-defined]
        except MachineError as exc:
            raise InvalidTransition(state=before.value, trigger=trigger.value) from exc
        record = TransitionRecord(
            from_state=before,
            to_state=self.state,
            trigger=trigger,
            reason=reason,
            error_code=error_code,
            ts=self._clock(),
        )
        self.since = record.ts
        self.history.append(record)
        if self._on_transition is not None:
            self._on_transition(record)
        return record


def mermaid_diagram(current: State | None = None) -> str:
    """The machine as a Mermaid `stateDiagram-v2`, with `current` marked as active.

    Rendered by transitions' own mermaid backend (no graphviz needed).
    """
    from transitions.extensions import GraphMachine

    model = _Model()
    initial = (current or State.STARTING).value
    GraphMachine(
        model=model,
        initial=initial,
        graph_engine="mermaid",
        show_state_attributes=False,
        title="genvisor supervisor",
        **_machine_kwargs(),
    )
    text: str = model.get_graph().draw(None)  # type: ignore[attr-defined]
    # The machine was built at `current` only to mark it; the diagram's entry is always `starting`.
    return text.replace(f"[*] --> {initial}", f"[*] --> {State.STARTING.value}")
