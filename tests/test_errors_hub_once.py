"""Hub failures are classified in one place: the code `genvisor models pull` reports is the code
genvisor's categorizer gives the same exception (actors/models/hub_failures.py only adds whether
to retry and the words for the model)."""

from __future__ import annotations

import pytest
from hub_server import Fault, FaultKind, HubServer
from models_fixtures import entry, hub, hub_session, store, tiny_dir  # noqa: F401

from actors.models.model_errors import DownloadFailed
from actors.models.pull import HubAccess, plan_pull
from actors.models.registry import ModelEntry
from actors.models.store import ModelStore
from supervisor.errors import ErrorCode, ErrorReport, default_categorizer


@pytest.mark.parametrize(
    ("kind", "code"),
    [
        (FaultKind.GATED_401, ErrorCode.MODEL_GATED),
        (FaultKind.GATED_403, ErrorCode.MODEL_GATED),
        (FaultKind.NOT_FOUND, ErrorCode.MODEL_NOT_FOUND),
        (FaultKind.STATUS_503, ErrorCode.NET_SERVER_ERROR),
    ],
)
def test_the_pull_and_the_categorizer_give_one_code(
    hub: HubServer,  # noqa: F811
    store: ModelStore,  # noqa: F811
    entry: ModelEntry,  # noqa: F811
    kind: FaultKind,
    code: ErrorCode,
) -> None:
    hub.add_fault(Fault(kind, "api", times=100))
    access = HubAccess(endpoint=hub.endpoint, retries=1, sleep=lambda _: None)
    with pytest.raises(DownloadFailed) as caught:
        plan_pull(entry, store, access)
    cause = caught.value.__cause__
    assert cause is not None
    verdict = default_categorizer().categorize(ErrorReport.from_exception(cause))
    assert caught.value.code is verdict.code is code
    # What the person reads keeps the pull's own words.
    assert caught.value.remedy
