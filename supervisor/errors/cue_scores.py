"""Weighted cues: the categorizer's last resort before UNKNOWN, for texts no rule knows.

A rule (config/error_patterns.toml) names one mechanism in a library's stable words and wins
alone. A cue (config/error_cues.toml) is a word or phrase that leans towards a category without
naming a mechanism: "memory" next to "GPU" or "Vulkan", "dial tcp", "must be between",
"undefined symbol", "Killed" at the end of a line. Texts from programs this project has never
read (llama.cpp, TensorFlow, a node pack's own sentence) are written in such words, not in the
ones a rule looks for.

Scoring: every cue that matches adds its weight to its code's category, once per cue. The text
gets the category whose score is at least `MIN_SCORE` and leads every other by at least
`MIN_LEAD`, with the code of the heaviest cue of that category that matched (the first in file
order among equals); anything less stays UNKNOWN — a guess that says "something went wrong"
is better than a confident wrong instruction.

Invariant: cues run only after every rule, OS error number and exception class has said
nothing, so a text a rule knows is never re-decided by them; they read the last error's text
and the unindented lines before it (a pasted log's earlier lines often carry the cause).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from supervisor.errors.categories import Category, ErrorCode
from supervisor.errors.literal_finder import LiteralFinder
from supervisor.errors.pattern_rules import (
    LiteralsModel,
    alternatives,
    read_toml_models,
    unique_names,
)

__all__ = [
    "CUE_RULE_PREFIX",
    "MIN_LEAD",
    "MIN_SCORE",
    "Cue",
    "CueScores",
    "CueVerdict",
    "load_cues",
]

# How a verdict of the cues is named in `Categorization.rule` ("cues:memory-on-device+...").
CUE_RULE_PREFIX = "cues:"
# Two strong cues, or one strong and two weak, before anything is claimed.
MIN_SCORE = 3.0
MIN_LEAD = 1.0


class _CueModel(LiteralsModel):
    weight: float = Field(gt=0, le=5)

    @field_validator("code")
    @classmethod
    def _known_category(cls, value: ErrorCode) -> ErrorCode:
        if value.category is Category.UNKNOWN:
            raise ValueError("a cue points to a category: UNKNOWN is what no cue says")
        return value


class _FileModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = 1
    cue: list[_CueModel] = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class Cue:
    name: str
    code: ErrorCode
    category: Category
    weight: float
    literals: tuple[str, ...]
    regex: re.Pattern[str] | None


@dataclass(frozen=True, slots=True)
class CueVerdict:
    code: ErrorCode
    # The cues that decided it, heaviest first (the categorizer's `rule` names them).
    cues: tuple[str, ...]
    score: float
    runner_up: float


class CueScores:
    """Compiled cues, scored in one pass over a lowered text."""

    __slots__ = ("_cues", "_finder")

    def __init__(self, cues: Sequence[Cue]) -> None:
        self._cues = tuple(cues)
        self._finder = LiteralFinder([cue.literals for cue in self._cues])

    def __len__(self) -> int:
        return len(self._cues)

    @property
    def cues(self) -> tuple[Cue, ...]:
        return self._cues

    def scores(self, lowered: str) -> tuple[dict[Category, float], dict[Category, list[Cue]]]:
        """Per category: the summed weight of the cues found, and those cues in file order."""
        # Where each cue's literals occur (the first few lines' worth; see `_found`).
        where: dict[int, list[int]] = {}
        for index, position in self._finder.occurrences(lowered):
            positions = where.setdefault(index, [])
            if len(positions) < _LINES_PER_CUE:
                positions.append(position)
        totals: dict[Category, float] = {}
        found: dict[Category, list[Cue]] = {}
        for index in sorted(where):
            cue = self._cues[index]
            if _found(cue, lowered, where[index]):
                totals[cue.category] = totals.get(cue.category, 0.0) + cue.weight
                found.setdefault(cue.category, []).append(cue)
        return totals, found

    def decide(self, lowered: str) -> CueVerdict | None:
        totals, found = self.scores(lowered)
        if not totals:
            return None
        ranked = sorted(totals.items(), key=lambda item: item[1], reverse=True)
        category, score = ranked[0]
        runner_up = ranked[1][1] if len(ranked) > 1 else 0.0
        if score < MIN_SCORE or score - runner_up < MIN_LEAD:
            return None
        # Stable sort: among cues of equal weight the first in the file names the code.
        chosen = sorted(found[category], key=lambda cue: cue.weight, reverse=True)
        return CueVerdict(
            code=chosen[0].code,
            cues=tuple(cue.name for cue in chosen),
            score=score,
            runner_up=runner_up,
        )


# Occurrences of a cue's literals its regex is tried at: a pasted log repeats its words, and a
# text that reaches the cues has already been read by every rule.
_LINES_PER_CUE = 6


# How far from one of its literals a cue's regex is looked for, each way, within the line.
_REACH = 200


def _found(cue: Cue, text: str, positions: list[int]) -> bool:
    """Invariant: a cue's regex is searched only near its literals: on the line that holds
    one, at most `_REACH` characters either side (the file's regexes never cross a line, and
    span less). A search over the whole text cost up to 1 ms on a long pasted log, over whole
    lines up to 40 us on a one-line log of 2000 characters; near the literals, a few us."""
    regex = cue.regex
    if regex is None:
        return True
    searched = -1
    for position in positions:
        if position < searched:
            continue  # inside a stretch already searched
        start = max(text.rfind("\n", 0, position) + 1, position - _REACH)
        line_end = text.find("\n", position)
        end = min(len(text) if line_end < 0 else line_end, position + _REACH)
        if regex.search(text, max(start, searched), end) is not None:
            return True
        searched = end
    return False


def load_cues(path: Path) -> CueScores:
    parsed = read_toml_models(path, _FileModel, key="error_cues", what="cues")
    unique_names(parsed.cue, key="error_cues", what="cue")
    return CueScores([_compile(c) for c in parsed.cue])


def _compile(model: _CueModel) -> Cue:
    return Cue(
        name=model.name,
        code=model.code,
        category=model.code.category,
        weight=model.weight,
        literals=tuple(model.any),
        # MULTILINE: `^` and `$` are a line's ends (see `_found`).
        regex=alternatives(model.regex, re.MULTILINE),
    )
