"""ErrorReport (+ context) -> Categorization.

Order, first decision wins:
0. the code one of genvisor's own exceptions carried into the report's context (`error_code`);
1. the exception's classes, most specific first (type_rules.py): a clear type is never
   overridden by text or context;
2. the OS error number a text report states (`[Errno 28] ...`, `[WinError 5]`, `(os error N)`);
3. the compiled text rules of config/error_patterns.toml (on the last error, then on the
   unindented lines before it);
4. the weighted cues of config/error_cues.toml (cue_scores.py), when one category leads;
5. the word model's guess (word_model.py, config/error_words.json), when one category leads;
6. `UNKNOWN.ERROR`.
Then context may refine: an out-of-memory with enough reserved-but-unallocated memory becomes
`VRAM.FRAGMENTED`; host-memory exhaustion becomes `VRAM.EXHAUSTED` when the pipeline runs on the
CPU (host RAM is its device memory).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from supervisor.core.settings import SHIPPED_CONFIG_DIR, config_path
from supervisor.errors.categories import (
    Categorization,
    CategorizationContext,
    Category,
    ErrorCode,
    Severity,
)
from supervisor.errors.cue_scores import CUE_RULE_PREFIX, CueScores, load_cues
from supervisor.errors.os_codes import os_error_code
from supervisor.errors.pattern_rules import PatternRuleSet, load_pattern_rules
from supervisor.errors.report import ErrorReport
from supervisor.errors.traceback_text import extract_facts, is_fragmented
from supervisor.errors.type_rules import TypeRuleTable, default_type_rules
from supervisor.errors.word_model import WORD_RULE_PREFIX, WordModel

__all__ = ["DEFAULT_PATTERNS_PATH", "Categorizer", "default_categorizer", "words_text"]

DEFAULT_PATTERNS_PATH = SHIPPED_CONFIG_DIR / "error_patterns.toml"

# Only the head of a message is read: the deciding words come first in every library's wording,
# and a 4000-character list of missing keys must not cost more than a short message.
_SCAN_CHARS = 2000
# Cues look for hundreds of words, each a scan of the text: they read the head of the last
# error and the end of the lines before it, where the deciding words are.
_CUE_CHARS = 800


class Categorizer:
    __slots__ = ("_cues", "_patterns", "_types", "_words")

    def __init__(
        self,
        patterns: PatternRuleSet,
        types: TypeRuleTable | None = None,
        cues: CueScores | None = None,
        words: WordModel | None = None,
    ) -> None:
        self._patterns = patterns
        self._types = types or default_type_rules()
        self._cues = cues
        self._words = words

    @classmethod
    def from_config(
        cls, path: Path | None = None, cues: Path | None = None, words: Path | None = None
    ) -> Categorizer:
        return cls(
            load_pattern_rules(path or _patterns_path()),
            cues=load_cues(cues or config_path("error_cues.toml")),
            words=WordModel.load(words or config_path("error_words.json")),
        )

    @property
    def patterns(self) -> PatternRuleSet:
        return self._patterns

    def categorize(
        self, report: ErrorReport, context: CategorizationContext | None = None
    ) -> Categorization:
        lowered = _lowered(report)
        result = self._by_type(report, lowered)
        if result is None:
            result = self._by_text(report, lowered)
        result = self._memory_underneath(result, report)
        return self._refine(result, report, context)

    def _memory_underneath(self, result: Categorization, report: ErrorReport) -> Categorization:
        """An error raised while handling an out-of-memory is its consequence: diffusers'
        `load_state_dict` answers any failure by re-reading the file as text, and reports "Unable
        to load weights" (a corrupted-file wording) when memory ran out first."""
        if result.code in _MEMORY_CODES:
            return result
        for name in report.cause_types:
            rule = self._types.lookup(name)
            if rule is not None and rule.code in _MEMORY_CODES:
                return Categorization.of(rule.code, f"cause:{name}")
        return result

    def _by_type(self, report: ErrorReport, lowered: str) -> Categorization | None:
        carried = report.context.get("error_code")
        if isinstance(carried, str) and carried in _CODE_VALUES:
            return Categorization.of(ErrorCode(carried), "carried:error_code")
        if not report.exc_type:
            return None
        for name in (report.exc_type, *report.mro_names):
            rule = self._types.lookup(name)
            if rule is None:
                continue
            if rule.handler is not None:
                code = rule.handler(report, lowered)
                if code is not None:
                    return Categorization.of(code, f"type:{name}")
            if rule.within is not None:
                match = self._patterns.first_match(lowered, rule.within)
                if match is not None:
                    return Categorization.of(
                        match.code, f"type:{name}+pattern:{match.name}", match.severity
                    )
            if rule.code is not None:
                return Categorization.of(rule.code, f"type:{name}")
        return None

    def _by_text(self, report: ErrorReport, lowered: str) -> Categorization:
        found = os_error_code(report, lowered)
        if found is not None:
            return Categorization.of(found[0], found[1])
        match = self._patterns.first_match(lowered)
        if match is not None:
            if match.code in _CONSEQUENCES:
                cause = self._earlier_cause(report)
                if cause is not None:
                    return cause
            return Categorization.of(match.code, f"pattern:{match.name}", match.severity)
        return self._by_earlier_text(report, lowered)

    def _earlier_cause(self, report: ErrorReport) -> Categorization | None:
        """A process death is the consequence; a limit named on the lines before it (a data
        loader's "out of shared memory", an allocator's failure) is the cause, and what the
        person can change."""
        earlier = _earlier_lines(report)
        match = self._patterns.first_match(earlier, _CAUSE_CATEGORIES) if earlier else None
        if match is None:
            return None
        return Categorization.of(match.code, f"earlier-cause:{match.name}", match.severity)

    def _by_earlier_text(self, report: ErrorReport, lowered: str) -> Categorization:
        """When the last error says nothing the rules know ("Broken pipe" from a pipe to
        ffmpeg), the lines before it often name the cause ("Unknown encoder 'libx264'", an
        exception the last one was raised while handling). Only the tail is read, and only
        its unindented lines: a traceback's frames and source lines are indented."""
        earlier = _earlier_lines(report)
        if earlier:
            match = self._patterns.first_match(earlier)
            if match is not None:
                return Categorization.of(match.code, f"earlier:{match.name}", match.severity)
        if self._cues is None and self._words is None:
            return Categorization.of(ErrorCode.UNKNOWN_ERROR, "fallback")
        text = _words_text(report, lowered, earlier)
        if self._cues is not None:
            verdict = self._cues.decide(text)
            if verdict is not None:
                return Categorization.of(verdict.code, CUE_RULE_PREFIX + "+".join(verdict.cues[:3]))
        if self._words is not None:
            guess = self._words.guess(text)
            if guess is not None:
                return Categorization.of(guess.code, WORD_RULE_PREFIX + "+".join(guess.words))
        return Categorization.of(ErrorCode.UNKNOWN_ERROR, "fallback")

    def _refine(
        self, result: Categorization, report: ErrorReport, context: CategorizationContext | None
    ) -> Categorization:
        if result.code is ErrorCode.VRAM_EXHAUSTED and "unallocated" in report.message:
            if is_fragmented(extract_facts(report.message)):
                return Categorization.of(
                    ErrorCode.VRAM_FRAGMENTED, result.rule + "+fragmented", result.severity
                )
        if result.code is ErrorCode.SYSTEM_HOST_MEMORY:
            # Read from the report only here: most verdicts never need the context.
            ctx = context if context is not None else CategorizationContext.from_report(report)
            if ctx.pipeline_on_cpu:
                return Categorization.of(
                    ErrorCode.VRAM_EXHAUSTED, result.rule + "+cpu-pipeline", Severity.HIGH
                )
        return result


def words_text(report: ErrorReport) -> str:
    """The text the cues and the word model read for `report` (lowered)."""
    return _words_text(report, _lowered(report), _earlier_lines(report))


def _lowered(report: ErrorReport) -> str:
    """The text every rule reads: the class name and the head of the message, lowered. The
    class name is part of it: a pasted `DefaultCPUAllocator: not enough memory` puts the
    deciding word where a class name would be."""
    head = report.message[:_SCAN_CHARS]
    return f"{report.exc_type}: {head}".lower() if report.exc_type else head.lower()


def _words_text(report: ErrorReport, lowered: str, earlier: str) -> str:
    """The head of the last error and the end of the unindented lines before it, where the
    deciding words are; for an exception without words (a bare `AssertionError`), also the
    statement that raised it, which says what was checked ("assert n_frames % 8 == 1")."""
    text = lowered[:_CUE_CHARS]
    if _wordless(report.message):
        text = f"{text}\n{_raising_statement(report.traceback)}"
    return f"{text}\n{_whole_lines_tail(earlier, _CUE_CHARS)}" if earlier else text


def _whole_lines_tail(text: str, limit: int) -> str:
    """The last `limit` characters of `text`, less the line they cut into (the word, when
    they hold no line break).

    Invariant: no part-line reaches a rule. A cut in the middle of a traceback's frame line
    leaves its path unindented (`"/venv/lib/python3.11/site-packages/..."`), read as one of the
    log's own lines; which words it holds depends on how long the install's path is."""
    if len(text) <= limit:
        return text
    tail = text[-limit:]
    if text[-limit - 1] == "\n":
        return tail
    _, newline, rest = tail.partition("\n")
    if newline:
        return rest
    # One line longer than the limit (a log without newlines): cut at a word instead.
    _, space, rest = tail.partition(" ")
    return rest if space else ""


def _earlier_lines(report: ErrorReport) -> str:
    """The unindented lines of the traceback's tail, lowered: a traceback's frames and source
    lines are indented, a log's own lines and chained exceptions are not."""
    tail = _whole_lines_tail(report.traceback, _SCAN_CHARS)
    return "\n".join(ln for ln in tail.splitlines() if ln and not ln[0].isspace()).lower()


def _wordless(message: str) -> bool:
    """No words of its own: empty, or only a class name ("AssertionError" pasted alone)."""
    stripped = message.strip()
    return not stripped or (" " not in stripped and stripped.endswith(("Error", "Exception")))


def _raising_statement(traceback: str) -> str:
    """The last source line of a traceback (the statement that raised), lowered; "" if none."""
    lines = [ln.strip() for ln in _whole_lines_tail(traceback, _SCAN_CHARS).splitlines()]
    for line in reversed(lines[:-1]):  # the last line is the exception itself
        if line and not line.startswith(('File "', "Traceback")) and set(line) - set("^~ "):
            return line.lower()
    return ""


_CODE_VALUES = frozenset(code.value for code in ErrorCode)
# What a death or a stop says when something else was its cause (see `_earlier_cause`).
_CONSEQUENCES = frozenset({ErrorCode.WORKER_CRASHED})
_CAUSE_CATEGORIES = frozenset({Category.SYSTEM_RESOURCE, Category.VRAM_MEMORY})
_MEMORY_CODES = frozenset(
    {ErrorCode.VRAM_EXHAUSTED, ErrorCode.VRAM_FRAGMENTED, ErrorCode.SYSTEM_HOST_MEMORY}
)


def _patterns_path() -> Path:
    return config_path("error_patterns.toml")


@lru_cache(maxsize=1)
def default_categorizer() -> Categorizer:
    """The categorizer built from the default rules file, compiled once per process."""
    return Categorizer.from_config()
