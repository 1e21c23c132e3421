"""The categorizer against real error texts from public trackers and library sources."""

from __future__ import annotations

import tomllib
from collections import Counter
from pathlib import Path

import pytest

from supervisor.errors import Category, ErrorCode, default_categorizer, report_from_text

CORPUS = Path(__file__).parent / "data" / "error_corpus.toml"
REQUIRED_CATEGORY_ACCURACY = 0.97


def load_cases() -> list[dict[str, str]]:
    with CORPUS.open("rb") as fh:
        cases: list[dict[str, str]] = tomllib.load(fh)["case"]
    return cases


CASES = load_cases()


def test_corpus_is_large_sourced_and_valid() -> None:
    assert len(CASES) >= 100
    for case in CASES:
        assert set(case) == {"source", "category", "code", "text"}, case
        assert "/" in case["source"], case["source"]
        assert case["text"].strip()
        code = ErrorCode(case["code"])
        assert Category(case["category"]) is code.category
    # Every category a real failure can have is represented, not just the easy ones.
    assert {Category(c["category"]) for c in CASES} == set(Category) - {Category.UNKNOWN}


def test_category_accuracy_meets_the_bar() -> None:
    categorizer = default_categorizer()
    misses = []
    for case in CASES:
        verdict = categorizer.categorize(report_from_text(case["text"]))
        if verdict.category != case["category"]:
            misses.append((case["source"], case["category"], verdict.category, verdict.rule))
    accuracy = 1 - len(misses) / len(CASES)
    assert accuracy >= REQUIRED_CATEGORY_ACCURACY, misses


def test_code_accuracy_and_no_fallbacks() -> None:
    categorizer = default_categorizer()
    verdicts = [categorizer.categorize(report_from_text(c["text"])) for c in CASES]
    wrong = [
        (c["source"], c["code"], v.code.value)
        for c, v in zip(CASES, verdicts, strict=True)
        if v.code != c["code"]
    ]
    assert len(wrong) <= len(CASES) * 0.05, wrong
    assert all(v.rule != "fallback" for v in verdicts)


@pytest.mark.parametrize("case", CASES, ids=[f"{i}:{c['code']}" for i, c in enumerate(CASES)])
def test_message_only_text_keeps_its_category(case: dict[str, str]) -> None:
    # The same text with its `Type:` prefix folded into the message (a log line) must still
    # land in the expected category: rules do not depend on a parsed class name alone.
    parsed = report_from_text(case["text"])
    flattened = parsed.model_copy(
        update={"exc_type": "", "message": f"{parsed.exc_type}: {parsed.message}"}
    )
    assert default_categorizer().categorize(flattened).category == case["category"]


def test_codes_are_spread_over_many_rules() -> None:
    rules = Counter(
        default_categorizer().categorize(report_from_text(c["text"])).rule for c in CASES
    )
    assert len(rules) >= 25
