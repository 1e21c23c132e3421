"""schemathesis against the OpenAPI schema of a real server: no generated input gets a 5xx, every
refusal is a UserError, and nothing is queued that was not valid.

Valid job bodies would really run on tiny-wan, so the sizes of *accepted* requests are mapped
down to cheap ones (32x32, 5 frames, 2 steps) before they are sent; values the server must
refuse (not multiples of 16, not 4k+1, beyond the model's limits, wrong types) are left as
generated. Bounded: 100 examples per operation and generation mode, no deadline.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.runtime_harness import make_home
from tests.server_process import ServerProcess, read_events_until, running_server

pytestmark = pytest.mark.slow

# tiny-wan's registry limits (config/models.toml): values within them would be accepted.
MAX_SIDE, MAX_FRAMES, MAX_STEPS = 1280, 81, 1000
ACCEPTED: list[str] = []
STATUSES: Counter[tuple[str, int]] = Counter()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[ServerProcess]:
    home = make_home(tmp_path_factory.mktemp("fuzz"), tiny_model)
    with running_server(home, GENVISOR_QUEUE_MAX="5") as srv:
        # /readyz answers 503 while starting, by design: fuzz the server once it serves.
        read_events_until(
            f"{srv.ws_url}/v1/events?since=0",
            lambda e: e["type"] == "supervisor.transition" and e["data"]["to"] == "ready",
        )
        yield srv


@pytest.fixture(scope="module")
def api_schema(server: ServerProcess) -> Any:
    loaded = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    loaded.hook(map_body)
    loaded.hook(after_call)
    return loaded


def _cheap(key: str, value: Any) -> Any:
    """The cheapest equivalent of a value the server would accept; others unchanged."""
    if not isinstance(value, int) or isinstance(value, bool):
        return value
    if key in ("width", "height") and value % 16 == 0 and 32 < value <= MAX_SIDE:
        return 32
    if key == "frames" and (value - 1) % 4 == 0 and 5 < value <= MAX_FRAMES:
        return 5
    if key == "steps" and 2 < value <= MAX_STEPS:
        return 2
    return value


def map_body(context: Any, body: Any) -> Any:
    if isinstance(body, dict) and context.operation.path == "/v1/jobs":
        return {k: _cheap(k, v) for k, v in body.items()}
    return body


def after_call(context: Any, case: Any, response: Any) -> None:
    STATUSES[(f"{case.method} {case.operation.path}", response.status_code)] += 1
    if case.method == "POST" and case.path == "/v1/jobs" and response.status_code == 202:
        ACCEPTED.append(response.json()["id"])


def user_error_contract(ctx: Any, response: Any, case: Any) -> None:
    """Every error answer of genvisor is a UserError with the words a person needs."""
    if response.status_code < 400:
        return None
    try:
        body = response.json()
    except ValueError:
        raise AssertionError(
            f"{response.status_code} is not JSON: {response.text[:200]!r}"
        ) from None
    for key in ("code", "title", "message", "suggestions"):
        assert key in body, f"{response.status_code} without {key!r}: {body}"
    if response.status_code == 422:
        assert body["errors"], body
        assert all(e.get("field") for e in body["errors"]), body
    return None


def operations(schema: Any) -> list[Any]:
    ops = [result.ok() for result in schema.get_all_operations()]
    return sorted(ops, key=lambda op: (op.path, op.method))


def test_no_server_error_on_any_generated_input(api_schema: Any, server: ServerProcess) -> None:
    ops = operations(api_schema)
    assert {op.path for op in ops} >= {"/v1/jobs", "/v1/jobs/{job_id}/cancel", "/v1/state"}
    for op, mode in itertools.product(ops, GenerationMode):

        @given(case=op.as_strategy(generation_mode=mode))
        @settings(
            max_examples=100,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def fuzz(case: Any) -> None:
            case.call_and_validate(checks=[not_a_server_error, user_error_contract])

        try:
            fuzz()
        except Unsatisfiable:
            # Nothing of this operation can be schema-invalid (no parameters, or only a free
            # string in the path): there is no negative input to generate.
            assert mode is GenerationMode.NEGATIVE, op.path
    # Both sides were exercised: accepted jobs and refused ones, found and unknown ids.
    assert STATUSES[("POST /v1/jobs", 202)] > 0, STATUSES
    assert STATUSES[("POST /v1/jobs", 422)] > 0, STATUSES
    assert STATUSES[("GET /v1/jobs/{job_id}", 404)] > 0, STATUSES
    # In the same test, not the next one: a check that reads what the fuzz left must not pass
    # vacuously when run alone.
    _only_valid_requests_became_jobs(server)


def _only_valid_requests_became_jobs(server: ServerProcess) -> None:
    """Every stored job was answered 202, and is valid."""
    assert ACCEPTED, "the fuzz accepted no job"
    jobs = httpx.get(f"{server.url}/v1/jobs", params={"limit": 500}).json()["jobs"]
    assert sorted(j["id"] for j in jobs) == sorted(ACCEPTED)
    for job in jobs:
        p = job["params"]
        assert p["width"] % 16 == 0
        assert p["height"] % 16 == 0
        assert (p["num_frames"] - 1) % 4 == 0
        assert p["width"] <= MAX_SIDE
        assert p["height"] <= MAX_SIDE
        assert 1 <= p["steps"] <= MAX_STEPS
        assert 0 < len(p["prompt"]) <= 2000
