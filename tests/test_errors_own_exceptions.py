"""Every exception class genvisor defines is categorized to a specific, catalogued code: a
person never reads "Something went wrong" for a failure genvisor raised on purpose."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from actors.models.model_errors import ModelUnavailable, PickleWeightsRefused
from supervisor.core.exceptions import (
    HomeInUse,
    JobCancelledError,
    PortInUse,
    ServerUnavailable,
)
from supervisor.errors import ErrorCode, ErrorReport, default_categorizer, explain
from supervisor.errors.type_rules import OWN_CODES

REPO = Path(__file__).resolve().parents[1]

# Imports every module of both packages (not `__main__`s, which run) in a fresh interpreter,
# so the heavy worker modules do not load into the test process, and lists each exception
# class defined there with its qualified MRO names, as `ErrorReport.from_exception` gives them.
WALK = """
import importlib, inspect, json, pkgutil, sys
import actors, supervisor
from supervisor.errors import qualified_name
found = {}
for package in (supervisor, actors):
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for obj in vars(module).values():
            if (
                inspect.isclass(obj)
                and issubclass(obj, BaseException)
                and obj.__module__.split(".")[0] in ("supervisor", "actors")
            ):
                found[qualified_name(obj)] = [
                    qualified_name(k) for k in obj.__mro__ if k not in (object, BaseException)
                ]
print(json.dumps(found))
"""


def defined_exception_classes() -> dict[str, list[str]]:
    out = subprocess.run(
        [sys.executable, "-c", WALK],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    classes: dict[str, list[str]] = json.loads(out.stdout.strip().splitlines()[-1])
    return classes


def test_every_defined_exception_class_has_a_specific_code_and_words() -> None:
    classes = defined_exception_classes()
    # The walk really found the hierarchy, the model store's errors and the worker's.
    assert len(classes) >= 30, sorted(classes)
    for name in (
        "supervisor.core.exceptions.GenvisorError",
        "actors.models.model_errors.ModelUnavailable",
        "actors.worker.channel.ChannelClosed",
        "supervisor.core.store_health.StoreCorrupted",
    ):
        assert name in classes
    categorizer = default_categorizer()
    unknown = []
    for name, mro in sorted(classes.items()):
        report = ErrorReport(exc_type=name, mro_names=tuple(mro[1:]), message="")
        verdict = categorizer.categorize(report)
        if verdict.code is ErrorCode.UNKNOWN_ERROR:
            unknown.append(name)
            continue
        user = explain(report, verdict)
        assert user.title, name
        assert user.message, name
        assert user.suggestions, name
    assert unknown == []
    # No rule names a class that is gone (moved or renamed classes would silently fall back).
    assert set(OWN_CODES) <= set(classes), sorted(set(OWN_CODES) - set(classes))


def test_a_model_that_is_not_there_says_how_to_get_it() -> None:
    missing = ModelUnavailable(
        model="tiny-wan",
        code=ErrorCode.MODEL_NOT_FOUND,
        reason="it has not been built in this data folder",
        remedy="Run `genvisor models make-tiny` to build it (a few seconds)",
    )
    report = ErrorReport.from_exception(missing, job_id="j1")
    # The code and the remedy cross the process boundary as plain data in the report.
    restored = ErrorReport.model_validate_json(report.model_dump_json())
    user = explain(restored)
    assert user.code is ErrorCode.MODEL_NOT_FOUND
    assert (
        user.message == "Model 'tiny-wan' is not usable: it has not been built in this data folder."
    )
    assert user.suggestions == ["Run `genvisor models make-tiny` to build it (a few seconds)."]


def test_instances_carry_their_own_facts_into_the_words() -> None:
    categorizer = default_categorizer()
    cases = [
        (PortInUse(host="127.0.0.1", port=8765, genvisor=False), ErrorCode.CONFIG_PORT_IN_USE),
        (HomeInUse(home="/h", pid=7, url=None, since=None), ErrorCode.CONFIG_HOME_IN_USE),
        (JobCancelledError(job_id="j", stage="denoise"), ErrorCode.PIPELINE_CANCELLED),
        (ServerUnavailable(url="http://127.0.0.1:1", reason="refused"), ErrorCode.NET_NO_SERVER),
        (PickleWeightsRefused(model="m", files=["a.bin"]), ErrorCode.MODEL_UNSAFE_FORMAT),
    ]
    for exc, code in cases:
        report = ErrorReport.from_exception(exc)
        assert categorizer.categorize(report).code is code, exc
    cancelled = explain(ErrorReport.from_exception(JobCancelledError(job_id="j", stage="denoise")))
    assert cancelled.title == "The job was cancelled"
