"""The categorizer against real error texts from public trackers that the project's own corpus
does not hold: a `dev` split rules may be written from, and a `heldout` split only measured."""

from __future__ import annotations

import tomllib
from collections import Counter
from pathlib import Path

from supervisor.errors import Category, default_categorizer, report_from_text

CORPUS = Path(__file__).parent / "data" / "error_realworld.toml"
# Floors a little under the figures measured (dev 0.99, held-out 0.97, blind 0.96 with batch 12,
# whose first run was 0.9375; bench/categorize.py): a rule, cue or word-model change that loses
# real-world texts fails here.
DEV_FLOOR = 0.95
HELDOUT_FLOOR = 0.90
BLIND_FLOOR = 0.90


def load_cases() -> list[dict[str, str]]:
    with CORPUS.open("rb") as fh:
        cases: list[dict[str, str]] = tomllib.load(fh)["case"]
    return cases


CASES = load_cases()


def accepted(case: dict[str, str]) -> set[str]:
    """The category a person would expect, and any other they would accept (`also`)."""
    return {case["category"], *case.get("also", [])}


def accuracy(split: str) -> tuple[float, list[tuple[str, str, str]]]:
    categorizer = default_categorizer()
    chosen = [c for c in CASES if c["split"] == split]
    misses = []
    for case in chosen:
        verdict = categorizer.categorize(report_from_text(case["text"]))
        if verdict.category not in accepted(case):
            misses.append((case["source"], case["category"], verdict.code.value))
    return 1 - len(misses) / len(chosen), misses


def test_corpus_is_sourced_split_and_covers_every_category() -> None:
    assert len(CASES) >= 150
    for case in CASES:
        assert {"source", "category", "split", "text"} <= set(case) <= {
            "source", "category", "split", "text", "also"
        }, case
        for other in case.get("also", []):
            assert Category(other) is not Category(case["category"]), case
        assert case["source"].startswith("https://github.com/"), case["source"]
        assert case["split"] in {"dev", "heldout", "blind"}
        assert case["text"].strip()
        Category(case["category"])
    splits = Counter(c["split"] for c in CASES)
    assert splits["heldout"] >= 60
    assert splits["blind"] >= 40
    assert len({c["source"] for c in CASES}) == len(CASES), "one text per thread"
    assert {Category(c["category"]) for c in CASES} == set(Category) - {Category.UNKNOWN}


def test_dev_accuracy() -> None:
    value, misses = accuracy("dev")
    assert value >= DEV_FLOOR, misses


def test_heldout_accuracy() -> None:
    value, misses = accuracy("heldout")
    assert value >= HELDOUT_FLOOR, misses


def test_blind_accuracy() -> None:
    value, misses = accuracy("blind")
    assert value >= BLIND_FLOOR, misses


def test_windows_error_numbers_decide_in_any_language() -> None:
    categorizer = default_categorizer()
    for text, code in [
        ("PermissionError: [WinError 5] Zugriff verweigert: 'C:\\\\x'", "FS.PERMISSION"),
        ("PermissionError: [WinError 32] 另一个程序正在使用此文件，进程无法访问。", "FS.IN_USE"),
        ("OSError: [WinError 1455] Le fichier de pagination est insuffisant", "SYSTEM.HOST_MEMORY"),
        ("Caused by: An existing connection was closed (os error 10054)", "NET.CONNECTION_LOST"),
        ("x: ConnectionResetError(10054, 'Se ha forzado la interrupción')", "NET.CONNECTION_LOST"),
        # Rust's `(os error N)` is the platform's number: Windows' beside a Windows path.
        ("writing C:\\Users\\a\\m.bin: Acceso denegado. (os error 5)", "FS.PERMISSION"),
        ("writing /home/a/m.bin: Input/output error (os error 5)", "FS.IO_ERROR"),
    ]:
        assert categorizer.categorize(report_from_text(text)).code.value == code, text
