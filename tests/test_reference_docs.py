"""The README's reference tables and the event schema file are generated, and current."""

from __future__ import annotations

import json
from pathlib import Path

from supervisor.api.reference_docs import rewrite
from supervisor.bus.schema import event_json_schema
from supervisor.errors import ErrorCode

ROOT = Path(__file__).resolve().parents[1]


def test_readme_reference_sections_are_current() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert rewrite(readme) == readme, "run `genvisor docs --write README.md`"
    for code in ErrorCode:
        assert f"`{code.value}`" in readme


def test_event_schema_file_is_current() -> None:
    on_disk = json.loads((ROOT / "docs" / "events.schema.json").read_text(encoding="utf-8"))
    assert on_disk == event_json_schema(), "run `genvisor schema --out docs/events.schema.json`"


def test_readme_opens_with_the_two_setup_commands() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert lines[:5] == ["# genvisor", "", "```", "make serve", "make test"]
