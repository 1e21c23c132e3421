"""The message catalog: `config/messages.toml`, validated once, rendered with real facts.

Templates may be lists of alternatives; `render` picks the first whose variables are all known,
so a message never shows an empty `{free}` and never crashes on a missing fact.
"""

from __future__ import annotations

import string
import tomllib
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from supervisor.core.exceptions import ConfigError
from supervisor.core.settings import SHIPPED_CONFIG_DIR, config_path
from supervisor.errors.categories import ErrorCode
from supervisor.errors.report import Stage

__all__ = [
    "DEFAULT_MESSAGES_PATH",
    "MAX_SUGGESTIONS",
    "CatalogEntry",
    "MessageCatalog",
    "Suggestion",
    "default_catalog",
    "render",
]

DEFAULT_MESSAGES_PATH = SHIPPED_CONFIG_DIR / "messages.toml"
MAX_SUGGESTIONS = 7
_UNKNOWN_VALUE = "(unknown)"

Template = Annotated[str | list[str], Field(min_length=1)]


class Suggestion(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    text: Template
    # Shown only for failures on these kinds of device / at these stages (None: always).
    devices: list[Literal["cuda", "cpu"]] | None = None
    stages: list[Stage] | None = None

    def fits(self, device_kind: str | None, stage: Stage) -> bool:
        """`device_kind` as CategorizationContext reads it from a report ("cuda", "cpu")."""
        if self.devices is not None and device_kind is not None:
            if device_kind not in self.devices:
                return False
        return self.stages is None or stage in self.stages


class CatalogEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    title: Template
    message: Template
    suggestions: list[Suggestion] = Field(default_factory=list, max_length=MAX_SUGGESTIONS)

    @model_validator(mode="after")
    def _unique_ids(self) -> CatalogEntry:
        ids = [s.id for s in self.suggestions]
        if len(ids) != len(set(ids)):
            raise ValueError(f"duplicate suggestion ids: {ids}")
        return self


class _CatalogFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = 1
    done: dict[str, str] = Field(default_factory=dict)
    codes: dict[ErrorCode, CatalogEntry]


class MessageCatalog:
    __slots__ = ("_done", "_entries")

    def __init__(self, entries: Mapping[ErrorCode, CatalogEntry], done: Mapping[str, str]) -> None:
        missing = sorted(code.value for code in ErrorCode if code not in entries)
        if missing:
            raise ConfigError(key="messages", value=missing, allowed="an entry for every code")
        self._entries = dict(entries)
        self._done = dict(done)

    @classmethod
    def from_config(cls, path: Path | None = None) -> MessageCatalog:
        source = path or _messages_path()
        try:
            parsed = _CatalogFile.model_validate(tomllib.loads(source.read_text(encoding="utf-8")))
        except (OSError, tomllib.TOMLDecodeError, ValidationError) as exc:
            raise ConfigError(
                key="messages", value=str(source), allowed=f"a valid message catalog ({exc})"
            ) from exc
        return cls(parsed.codes, parsed.done)

    def entry(self, code: ErrorCode) -> CatalogEntry:
        return self._entries[code]

    def done_text(self, action_id: str, values: Mapping[str, object]) -> str:
        """How an automatically applied action is reported; its id when the catalog has none."""
        template = self._done.get(action_id)
        return render(template, values) if template else action_id.replace("_", " ")


def render(template: str | list[str], values: Mapping[str, object]) -> str:
    """The first alternative whose variables are all in `values` (and not None); the last one,
    with unknown variables shown as "(unknown)", when none fits."""
    alternatives = [template] if isinstance(template, str) else template
    for candidate in alternatives:
        if all(values.get(name) is not None for name in _fields(candidate)):
            return candidate.format_map({k: values[k] for k in _fields(candidate)})
    last = alternatives[-1]
    filled = {name: values.get(name) for name in _fields(last)}
    return last.format_map({k: _UNKNOWN_VALUE if v is None else v for k, v in filled.items()})


@lru_cache(maxsize=512)
def _fields(template: str) -> tuple[str, ...]:
    names: list[str] = []
    for _, field, _, _ in string.Formatter().parse(template):
        if field is not None and field not in names:
            names.append(field)
    return tuple(names)


def _messages_path() -> Path:
    return config_path("messages.toml")


@lru_cache(maxsize=1)
def default_catalog() -> MessageCatalog:
    return MessageCatalog.from_config()
