"""Restart intensity and backoff as pure functions of `now`: no event loop."""

from __future__ import annotations

import random

import pytest

from supervisor.supervision.child_spec import ChildSpec, RestartType
from supervisor.supervision.restart_window import (
    ExitKind,
    backoff_delay,
    decide_restart,
    restarts_in_window,
)


def _spec(**kw: object) -> ChildSpec:
    defaults: dict[str, object] = {
        "id": "worker",
        "start": object,
        "max_restarts": 3,
        "period_s": 60.0,
        "backoff_base_s": 0.5,
        "backoff_max_s": 4.0,
        "jitter": 0.0,
    }
    defaults.update(kw)
    return ChildSpec(**defaults)  # type: ignore[arg-type]


def test_child_spec_has_otp_defaults() -> None:
    spec = ChildSpec(id="x", start=object)  # type: ignore[arg-type]
    assert spec.restart is RestartType.PERMANENT
    assert spec.shutdown_timeout_s == 5.0
    with pytest.raises(ValueError, match="max_restarts"):
        ChildSpec(id="x", start=object, max_restarts=-1)  # type: ignore[arg-type]


def test_k_crashes_restart_then_k_plus_one_escalates() -> None:
    spec = _spec()
    history: tuple[float, ...] = ()
    delays = []
    for i, now in enumerate([100.0, 101.0, 102.0]):
        decision = decide_restart(spec, history, now, ExitKind.ABNORMAL)
        assert decision.restart
        assert not decision.escalate
        assert decision.restarts_in_window == i + 1
        history = decision.history
        delays.append(decision.delay_s)
    assert delays == [0.5, 1.0, 2.0]  # exponential backoff grows
    fourth = decide_restart(spec, history, 103.0, ExitKind.ABNORMAL)
    assert fourth.escalate
    assert not fourth.restart
    assert "4 times within 60 s" in fourth.reason


def test_window_slides() -> None:
    spec = _spec()
    history = (0.0, 10.0, 20.0)
    # At t=65 the crash at t=0 has left the 60 s window: a restart is allowed again.
    decision = decide_restart(spec, history, 65.0, ExitKind.ABNORMAL)
    assert decision.restart
    assert decision.history == (10.0, 20.0, 65.0)
    assert restarts_in_window(history, 60.0, 60.0) == (10.0, 20.0)


def test_backoff_is_capped_and_jittered() -> None:
    spec = _spec(jitter=0.2)
    rng = random.Random(7)
    draws = [backoff_delay(10, spec, rng) for _ in range(200)]
    assert all(3.2 <= d <= 4.8 for d in draws)  # cap 4.0, +-20 %
    assert len(set(draws)) > 100  # jitter spreads siblings apart


@pytest.mark.parametrize(
    ("restart", "kind", "expect_restart"),
    [
        (RestartType.PERMANENT, ExitKind.NORMAL, True),
        (RestartType.PERMANENT, ExitKind.ABNORMAL, True),
        (RestartType.TRANSIENT, ExitKind.NORMAL, False),
        (RestartType.TRANSIENT, ExitKind.ABNORMAL, True),
        (RestartType.TEMPORARY, ExitKind.ABNORMAL, False),
    ],
)
def test_restart_types(restart: RestartType, kind: ExitKind, expect_restart: bool) -> None:
    decision = decide_restart(_spec(restart=restart), (), 0.0, kind)
    assert decision.restart is expect_restart
    assert decision.escalate is False


def test_zero_intensity_escalates_at_first_crash() -> None:
    decision = decide_restart(_spec(max_restarts=0), (), 0.0, ExitKind.ABNORMAL)
    assert decision.escalate
