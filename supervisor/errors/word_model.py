"""The word model: the categorizer's guess when no rule, number, class or cue decides.

Rules and cues are written by hand and know the words someone thought of. Texts from programs
this project has never read use others ("UR_RESULT_ERROR_OUT_OF_RESOURCES", "ulysses_size",
"No frames generated"), and UNKNOWN helps no one. This model counts, for every word of the
real error texts in tests/data (each labelled with the category a person expects), in how many
texts of each category it occurs; a new text's category is the one under which its words are
the likeliest (naive Bayes over word presence, add-half smoothing), when it has enough known
words and one category leads by `MIN_MARGIN` (natural log of the odds).

The counts ship as config/error_words.json, trained from the corpora by
`python -m supervisor.errors.word_model` (`make error-words`); a test trains again and compares,
so the file is always what the corpora say. Words are runs of three or more letters, digits
and underscores starting with a letter, kept when at least two texts hold them (a word of one
text is that text, not a category).

Invariant: the model reads the same text the cues read (`Categorizer.words_text`), and it is
asked last: a verdict of it is named `words:` in `Categorization.rule`, and `explain` says the
advice is a guess from the words.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tomllib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from supervisor.core.exceptions import ConfigError
from supervisor.errors.categories import Category, ErrorCode

__all__ = [
    "MIN_MARGIN",
    "MIN_WORDS",
    "WORD_RULE_PREFIX",
    "WordModel",
    "WordVerdict",
    "corpus_examples",
    "main",
    "render",
    "train",
    "words_of",
]

WORD_RULE_PREFIX = "words:"
# At least this many known words besides exception class names, and the best category this
# far ahead of the next (natural log of the likelihood ratio: 0.5 is a factor of 1.65): a text
# of a class name and one word ("RuntimeError: a bug") says nothing.
MIN_WORDS = 2
MIN_MARGIN = 0.5
MIN_TEXTS_PER_WORD = 2
ALPHA = 0.5
_WORD = re.compile(r"[a-z][a-z0-9_]{2,}")
# English function words and the boilerplate of every traceback: they say nothing of a
# category, and two of them must not make a guess ("it did not work").
_STOPWORDS = frozenset(
    """
    about above after again all also and any are because been before being but can cannot
    could did does doing done during each for from had has have having her here his how into
    its just may might more most must not now off once only other our out over same she should
    some such than that the their them then there these they this those through too under
    until very was were what when where which while who why will with would you your yet
    error errors exception traceback recent call last line lines raise raised handling
    occurred following another above please see check try something happened went wrong work
    works working fail failed failure issue problem help thanks
    """.split()
)
_CLASS_NAME = re.compile(r"(error|exception|warning)$")
# A file path with two separators or more ("/venv/lib/python3.11/site-packages/x.py",
# "c:\\users\\me\\appdata\\..."): where the program is installed says nothing of what failed,
# and read as words it made the guess depend on the install's folder names.
_PATH = re.compile(r"(?:[a-z]:)?[\\/]?(?:[\w.~-]+[\\/]){2,}[\w.~-]*")
_HEXLIKE = re.compile(r"(?=[a-f0-9]*\d)[a-f0-9]{6,}|\w*\d{4,}\w*")
# What a guess says: the general code of each category (its message claims nothing more).
GUESS_CODES: dict[Category, ErrorCode] = {
    Category.INPUT_VALIDATION: ErrorCode.INPUT_INVALID,
    Category.MODEL_LOADING: ErrorCode.MODEL_LOAD_FAILED,
    Category.VRAM_MEMORY: ErrorCode.VRAM_EXHAUSTED,
    Category.GENERATION_PIPELINE: ErrorCode.PIPELINE_FAILED,
    Category.SYSTEM_RESOURCE: ErrorCode.SYSTEM_RESOURCE_LIMIT,
    Category.CONFIGURATION: ErrorCode.CONFIG_FAILED,
    Category.FILE_SYSTEM: ErrorCode.FS_FAILED,
    Category.NETWORK: ErrorCode.NET_FAILED,
}
_CATEGORIES = tuple(GUESS_CODES)


def words_of(text: str) -> set[str]:
    """The words of a lowered text, as the model counts them (each once); hashes, ids and
    addresses ("a38b7bcf") are no words."""
    return {
        word
        for word in _WORD.findall(_PATH.sub(" ", text))
        if word not in _STOPWORDS and not _HEXLIKE.fullmatch(word)
    }


@dataclass(frozen=True, slots=True)
class WordVerdict:
    category: Category
    code: ErrorCode
    margin: float
    # The known words that leaned most towards the category, strongest first (at most 3).
    words: tuple[str, ...]


class WordModel:
    """Per word, the log-likelihood of its presence under each category."""

    __slots__ = ("_log_prior", "_weights")

    def __init__(self, texts: Sequence[int], counts: dict[str, Sequence[int]]) -> None:
        """`texts[i]`: training texts of category i (`_CATEGORIES` order); `counts[word][i]`:
        how many of them hold the word."""
        total = sum(texts)
        self._log_prior = tuple(math.log(n / total) if n else -math.inf for n in texts)
        self._weights = {
            word: tuple(math.log((n + ALPHA) / (texts[i] + 2 * ALPHA)) for i, n in enumerate(row))
            for word, row in counts.items()
        }

    def __len__(self) -> int:
        return len(self._weights)

    @classmethod
    def load(cls, path: Path) -> WordModel:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("categories") != [c.value for c in _CATEGORIES]:
                raise ValueError("its categories are not this genvisor's")
            return cls(data["texts"], data["words"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(
                key="error_words", value=str(path), allowed=f"a word model file ({exc})"
            ) from exc

    def guess(self, text: str) -> WordVerdict | None:
        known = [(word, self._weights[word]) for word in words_of(text) if word in self._weights]
        # An exception's class name ("runtimeerror") leans, but is no content: a generic bug's
        # "RuntimeError: a bug in the router" has one word, and stays unknown.
        if sum(not _CLASS_NAME.search(word) for word, _ in known) < MIN_WORDS:
            return None
        scores = list(self._log_prior)
        for _, weights in known:
            for i, weight in enumerate(weights):
                scores[i] += weight
        ranked = sorted(range(len(scores)), key=scores.__getitem__, reverse=True)
        best, second = ranked[0], ranked[1]
        margin = scores[best] - scores[second]
        if margin < MIN_MARGIN:
            return None
        # The words that favour the winner over the runner-up the most (for the person).
        leaning = sorted(known, key=lambda kw: kw[1][second] - kw[1][best])
        category = _CATEGORIES[best]
        return WordVerdict(
            category, GUESS_CODES[category], round(margin, 2), tuple(w for w, _ in leaning[:3])
        )


def train(examples: Iterable[tuple[str, Category]]) -> dict[str, object]:
    """The model file's content from (lowered text, category) pairs."""
    texts = Counter[Category]()
    holders: dict[str, Counter[Category]] = {}
    for text, category in examples:
        texts[category] += 1
        for word in words_of(text):
            holders.setdefault(word, Counter())[category] += 1
    words = {
        word: [by[c] for c in _CATEGORIES]
        for word, by in sorted(holders.items())
        if sum(by.values()) >= MIN_TEXTS_PER_WORD
    }
    return {
        "version": 1,
        "categories": [c.value for c in _CATEGORIES],
        "texts": [texts[c] for c in _CATEGORIES],
        "words": words,
    }


def corpus_examples(data_dir: Path) -> list[tuple[str, Category]]:
    """The labelled texts of tests/data the model may learn from (the project's own corpus and
    the real-world "dev" split), as the categorizer reads them."""
    from supervisor.errors.categorizer import words_text
    from supervisor.errors.traceback_text import report_from_text

    examples: list[tuple[str, Category]] = []
    with (data_dir / "error_corpus.toml").open("rb") as fh:
        for case in tomllib.load(fh)["case"]:
            examples.append(
                (words_text(report_from_text(case["text"])), ErrorCode(case["code"]).category)
            )
    with (data_dir / "error_realworld.toml").open("rb") as fh:
        for case in tomllib.load(fh)["case"]:
            # Invariant: the held-out and blind texts are only measured, never learned from.
            if case["split"] == "dev":
                text = words_text(report_from_text(case["text"]))
                examples.append((text, Category(case["category"])))
    return examples


def render(model: dict[str, object]) -> str:
    """The file's text: one word a line, so a change to the corpora reads as a small diff."""
    words = model["words"]
    assert isinstance(words, dict)
    head = {k: v for k, v in model.items() if k != "words"}
    lines = [json.dumps(head)[:-1] + ', "words": {']
    entries = [f"  {json.dumps(word)}: {json.dumps(row)}" for word, row in words.items()]
    lines.append(",\n".join(entries))
    lines.append("}}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m supervisor.errors.word_model",
        description="Train the word model from the labelled error texts.",
    )
    root = Path(__file__).resolve().parents[2]
    parser.add_argument("--data", type=Path, default=root / "tests" / "data")
    parser.add_argument("--out", type=Path, default=root / "config" / "error_words.json")
    args = parser.parse_args(argv)
    model = train(corpus_examples(args.data))
    args.out.write_text(render(model), encoding="utf-8")
    words = model["words"]
    assert isinstance(words, dict)
    sys.stdout.write(f"wrote {args.out}: {len(words)} words\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
