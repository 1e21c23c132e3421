"""Text rules from `config/error_patterns.toml`, compiled once.

A rule matches when one of its lower-case `any` literals occurs in the lowered message and, if
it has `regex` entries, one of them also matches. The literal test is a cheap prefilter: most
rules are rejected by a few substring searches, and a regex only runs where its words occur.
Rules are tried in file order; the first match wins, so specific rules come before general ones.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from supervisor.core.exceptions import ConfigError
from supervisor.errors.categories import Category, ErrorCode, Severity
from supervisor.errors.literal_finder import LiteralFinder

__all__ = [
    "LiteralsModel",
    "PatternRule",
    "PatternRuleSet",
    "alternatives",
    "load_pattern_rules",
    "read_toml_models",
    "unique_names",
]

M = TypeVar("M", bound=BaseModel)


class LiteralsModel(BaseModel):
    """What a text rule and a cue (cue_scores.py) both are: a name, a code, lower-case
    literals and optional regexes, checked when the file is read."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    code: ErrorCode
    any: list[str] = Field(min_length=1)
    regex: list[str] = Field(default_factory=list)

    @field_validator("any")
    @classmethod
    def _lower_literals(cls, value: list[str]) -> list[str]:
        for literal in value:
            if literal != literal.lower() or not literal:
                raise ValueError(f"literal {literal!r} must be non-empty lower case")
        return value

    @field_validator("regex")
    @classmethod
    def _compilable(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"regex {pattern!r} does not compile: {exc}") from exc
        return value


class _RuleModel(LiteralsModel):
    severity: Severity | None = None
    # The code to use instead when the pipeline runs on the CPU (host RAM is device memory).
    cpu_pipeline_code: ErrorCode | None = None


class _FileModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = 1
    rule: list[_RuleModel] = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class PatternRule:
    name: str
    code: ErrorCode
    literals: tuple[str, ...]
    regex: re.Pattern[str] | None
    severity: Severity | None
    cpu_pipeline_code: ErrorCode | None


class PatternRuleSet:
    """An ordered list of compiled rules."""

    __slots__ = ("_finder", "_rules", "_table")

    def __init__(self, rules: Sequence[PatternRule]) -> None:
        self._rules = tuple(rules)
        self._table = tuple((r, r.code.category, r.literals, r.regex) for r in self._rules)
        self._finder = LiteralFinder([r.literals for r in self._rules])

    def __len__(self) -> int:
        return len(self._rules)

    @property
    def rules(self) -> tuple[PatternRule, ...]:
        return self._rules

    def first_match(
        self, lowered: str, within: frozenset[Category] | None = None
    ) -> PatternRule | None:
        """The first rule that matches `lowered`; with `within`, only rules of those categories.

        All categories: the rules whose literals occur are found in one pass over the text
        (`LiteralFinder`), and only their regexes run, in file order. Measured on the corpora's
        texts (minimum of 20 runs, by length): a scan per literal, rule by rule, cost 10 us at
        50-100 characters and 16 at 200; the one pass 5.5 and 14. With `within` (an exception
        class that names its categories) most rules are skipped before any literal is looked
        for, and the scan is the cheaper."""
        if within is None:
            rules = self._rules
            for index in sorted(self._finder.items(lowered)):
                rule = rules[index]
                if rule.regex is None or rule.regex.search(lowered) is not None:
                    return rule
            return None
        for rule, category, literals, regex in self._table:
            if category not in within:
                continue
            for literal in literals:
                if literal in lowered:
                    if regex is None or regex.search(lowered) is not None:
                        return rule
                    break
        return None


def read_toml_models(path: Path, file_model: type[M], *, key: str, what: str) -> M:
    """`path` read and checked by `file_model`; any fault is a ConfigError naming `key`."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        return file_model.model_validate(raw)
    except (OSError, tomllib.TOMLDecodeError, ValidationError) as exc:
        raise ConfigError(key=key, value=str(path), allowed=f"a valid {what} file ({exc})") from exc


def unique_names(models: Sequence[LiteralsModel], *, key: str, what: str) -> None:
    names = [m.name for m in models]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(key=key, value=duplicates, allowed=f"unique {what} names")


def alternatives(patterns: Sequence[str], flags: int) -> re.Pattern[str] | None:
    """One regex matching any of `patterns` (None for none)."""
    return re.compile("|".join(f"(?:{p})" for p in patterns), flags) if patterns else None


def load_pattern_rules(path: Path) -> PatternRuleSet:
    parsed = read_toml_models(path, _FileModel, key="error_patterns", what="rules")
    unique_names(parsed.rule, key="error_patterns", what="rule")
    return PatternRuleSet([_compile(r) for r in parsed.rule])


def _compile(model: _RuleModel) -> PatternRule:
    # Rules run on lowered text, so the regexes are written in lower case; IGNORECASE stays on
    # for safety when a rule author writes an upper-case class like `\bCUDA\b`.
    return PatternRule(
        name=model.name,
        code=model.code,
        literals=tuple(model.any),
        regex=alternatives(model.regex, re.IGNORECASE),
        severity=model.severity,
        cpu_pipeline_code=model.cpu_pipeline_code,
    )
