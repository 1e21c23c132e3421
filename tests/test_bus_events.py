"""Typed events: one model per type, the wire envelope, the JSON Schema and `genvisor schema`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from supervisor.bus import events as ev
from supervisor.bus.schema import event_json_schema, wire_adapter
from supervisor.cli import schema_cmd

SAMPLES: list[ev.EventData] = [
    ev.SupervisorTransition(
        from_state=ev.SupervisorStateName.STARTING,
        to_state=ev.SupervisorStateName.READY,
        trigger="started",
        reason="all children up",
    ),
    ev.ActorStarted(actor="generator", pid=4242),
    ev.ActorStopped(actor="generator"),
    ev.ActorCrashed(actor="generator", error_code="WORKER.DIED", message="exit code -9"),
    ev.ActorRestarted(actor="generator", restarts_in_window=2, delay_s=0.4),
    ev.BusLagged(dropped=3, resume_from=10),
    ev.BusGap(from_seq=11, to_seq=1000, reason=ev.GapReason.RESTART),
    ev.JobQueued(job_id="j1", position=0),
    ev.JobStarted(job_id="j1", attempt=1, model="tiny-wan", options={"steps": 2, "w": 32}),
    ev.JobProgress(job_id="j1", stage=ev.Stage.DENOISE, step=1, total_steps=2, elapsed_s=0.3),
    ev.JobRetrying(
        job_id="j1",
        attempt=2,
        reason="out of memory",
        error_code="VRAM.EXHAUSTED",
        change={"vae_tiling": True},
    ),
    ev.JobSucceeded(job_id="j1", output="/tmp/j1.mp4", changes=[{"steps": 1}], duration_s=1.2),
    ev.JobFailed(job_id="j1", error={"title": "No memory", "suggestions": ["smaller"]}),
    ev.JobCancelled(job_id="j1"),
    ev.ModelStatus(model="tiny-wan", availability=ev.ModelAvailability.AVAILABLE),
    ev.ModelDownloadProgress(
        model="m", file="a.safetensors", file_bytes=10, file_total=20, bytes=10, total=40
    ),
    ev.ModelVerified(model="m", ok=False, problems=["a.safetensors: truncated"]),
    ev.ModelRepaired(model="m", files=["a.safetensors"]),
    ev.VramSample(source=ev.VramSource.HOST, device="cpu", total=8, used=3, free=5),
    ev.VramPressure(
        device="cuda:0", level=ev.PressureLevel.WARNING, previous=ev.PressureLevel.NORMAL
    ),
    ev.RecoveryAttempt(job_id="j1", step="enable_vae_tiling", error_code="VRAM.EXHAUSTED"),
    ev.RecoveryResult(job_id=None, step="restart_worker", ok=True, detail="pid 12"),
]


def test_every_event_type_has_one_model_and_one_sample() -> None:
    assert set(ev.DATA_MODELS) == set(ev.EventType)
    assert {type(s).event_type for s in SAMPLES} == set(ev.EventType)
    for event_type, model in ev.DATA_MODELS.items():
        assert model.event_type is event_type


@pytest.mark.parametrize("data", SAMPLES, ids=lambda d: d.event_type.value)
def test_envelope_round_trips_through_json(data: ev.EventData) -> None:
    event = ev.Event(seq=7, ts=1_700_000_000.25, data=data)
    text = event.to_json()
    raw = json.loads(text)
    assert set(raw) == {"seq", "ts", "type", "data"}
    assert raw["type"] == data.event_type.value
    assert raw == event.to_dict()
    again = ev.Event.from_json(text)
    assert again == event
    assert type(again.data) is type(data)
    # The schema's discriminated union accepts exactly what the bus writes.
    assert wire_adapter().validate_json(text).type == data.event_type.value


def test_transition_uses_from_and_to_on_the_wire() -> None:
    data = ev.SupervisorTransition.model_validate(
        {"from": "ready", "to": "failed", "trigger": "fail", "error_code": "VRAM.EXHAUSTED"}
    )
    assert data.from_state is ev.SupervisorStateName.READY
    dumped = json.loads(data.model_dump_json())
    assert dumped["from"] == "ready"
    assert dumped["to"] == "failed"
    assert "from_state" not in dumped


def test_invalid_events_are_rejected() -> None:
    with pytest.raises(ValidationError):
        ev.JobProgress.model_validate({"job_id": "j", "stage": "sleeping", "elapsed_s": 0})
    with pytest.raises(ValidationError):
        ev.Event.from_json('{"seq":1,"ts":1.0,"type":"job.exploded","data":{}}')
    with pytest.raises(ValidationError):
        ev.Event.from_json('{"seq":1,"ts":1.0,"type":"job.cancelled","data":{"job":"x"}}')
    frozen = ev.JobCancelled(job_id="j")
    with pytest.raises(ValidationError):
        frozen.job_id = "k"  # type: ignore[misc]


def test_json_schema_is_a_discriminated_union_of_all_types() -> None:
    schema = event_json_schema()
    assert schema["$schema"].endswith("2020-12/schema")
    assert len(schema["oneOf"]) == len(ev.EventType)
    mapping = schema["discriminator"]["mapping"]
    assert set(mapping) == {t.value for t in ev.EventType}
    transition = schema["$defs"]["SupervisorTransition"]
    assert {"from", "to", "trigger", "reason", "error_code"} <= set(transition["properties"])
    json.dumps(schema)  # serializable as is


def test_schema_command_writes_the_schema(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser(prog="genvisor")
    schema_cmd.register(parser.add_subparsers(dest="command", required=True))
    out = tmp_path / "nested" / "events.schema.json"
    args = parser.parse_args(["schema", "--out", str(out)])
    assert args.func(args) == 0
    assert json.loads(out.read_text()) == json.loads(json.dumps(event_json_schema()))
    args = parser.parse_args(["schema"])
    assert args.func(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["discriminator"]["mapping"]) == {t.value for t in ev.EventType}
