"""The JSON Schema of every event on the wire: a union of envelopes discriminated by ``type``.

One envelope model per event type (``SupervisorTransitionEvent`` and so on) is built from
`DATA_MODELS`, so the schema cannot drift from the models the bus validates with.
"""

from __future__ import annotations

from functools import cache
from typing import Annotated, Any, Literal, Union, cast

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model

from supervisor.bus.events import DATA_MODELS, EventData, EventType

__all__ = ["envelope_models", "event_json_schema", "wire_adapter"]

SCHEMA_ID = "https://genvisor.local/schemas/events.json"


class _EnvelopeBase(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _envelope_model(event_type: EventType, data_model: type[EventData]) -> type[BaseModel]:
    # A Literal built from a runtime value: mypy cannot see through it, pydantic can.
    type_literal = cast(Any, Literal)[event_type.value]
    return create_model(
        f"{data_model.__name__}Event",
        __base__=_EnvelopeBase,
        __doc__=f"The envelope of a `{event_type.value}` event.",
        seq=(int, Field(ge=0, description="Monotonic number of the event on this bus")),
        ts=(float, Field(description="Unix time of publication, in seconds")),
        type=(type_literal, Field(description="The event type")),
        data=(data_model, ...),
    )


@cache
def envelope_models() -> tuple[type[BaseModel], ...]:
    """One envelope model per event type, in the order of `EventType`."""
    return tuple(_envelope_model(t, DATA_MODELS[t]) for t in EventType)


@cache
def wire_adapter() -> TypeAdapter[Any]:
    """Validates any event envelope; the union is discriminated by ``type``."""
    # A Union built from a runtime tuple: again invisible to mypy, plain to pydantic.
    union: Any = cast(Any, Union)[envelope_models()]
    return TypeAdapter(cast(Any, Annotated)[union, Field(discriminator="type")])


def event_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of one event as sent on the WebSocket and kept in the journal."""
    schema = wire_adapter().json_schema(mode="serialization", ref_template="#/$defs/{model}")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "genvisor event",
        "description": (
            "One event of the genvisor bus: {seq, ts, type, data}. `seq` increases by one per "
            "published event; `bus.lagged` is a per-subscriber notice whose seq is the last "
            "one delivered in order; `bus.gap` is a per-subscriber replay marker for numbers "
            "with no event (never reused), whose seq is the last number it covers."
        ),
        **schema,
    }
