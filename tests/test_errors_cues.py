"""Weighted cues (config/error_cues.toml): the last resort before UNKNOWN, and the one-pass
literal finder the text rules and the cues share."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from supervisor.cli.main import main
from supervisor.core.exceptions import ConfigError
from supervisor.core.settings import config_path
from supervisor.errors import (
    Category,
    ErrorCode,
    ErrorReport,
    Stage,
    default_categorizer,
    report_from_text,
)
from supervisor.errors.categorizer import Categorizer, words_text
from supervisor.errors.cue_scores import (
    CUE_RULE_PREFIX,
    MIN_LEAD,
    MIN_SCORE,
    Cue,
    CueScores,
    load_cues,
)
from supervisor.errors.literal_finder import LiteralFinder
from supervisor.errors.word_model import (
    WORD_RULE_PREFIX,
    WordModel,
    corpus_examples,
    render,
    train,
    words_of,
)

REPO = Path(__file__).resolve().parents[1]


def _cue(name: str, code: ErrorCode, weight: float, *literals: str) -> Cue:
    return Cue(name, code, code.category, weight, literals, None)


# -- the literal finder ---------------------------------------------------------------------


def test_the_finder_finds_what_a_scan_per_literal_finds() -> None:
    """Overlapping, nested and prefix literals included: the same items as `in`, per item."""
    rules = default_categorizer().patterns.rules
    cues = load_cues(config_path("error_cues.toml")).cues
    literals_of = [r.literals for r in rules] + [c.literals for c in cues]
    finder = LiteralFinder(literals_of)
    pool = sorted({lit for lits in literals_of for lit in lits})
    rng = random.Random(14)
    texts = ["", "out of memory", "cudamalloc failed: out of memory", "oomkill"]
    for _ in range(300):
        words = rng.choices(pool, k=rng.randint(1, 6))
        filler = rng.choice(["", " ", "x", "\n", ": "])
        texts.append(filler.join(w[: rng.randint(1, len(w))] for w in words))
    for text in texts:
        expected = {i for i, lits in enumerate(literals_of) if any(lit in text for lit in lits)}
        assert finder.items(text) == expected, text
        assert {i for i, _ in finder.occurrences(text)} == expected, text


def test_the_finder_reports_each_occurrence_at_its_position() -> None:
    finder = LiteralFinder([("memory",), ("out of memory", "oom")])
    text = "gpu out of memory; memory again"
    found = sorted(finder.occurrences(text))
    assert found == [(0, 11), (0, 19), (1, 4)]


# -- scoring --------------------------------------------------------------------------------


def test_a_category_needs_the_minimum_score_and_a_lead() -> None:
    scores = CueScores(
        [
            _cue("strong", ErrorCode.VRAM_EXHAUSTED, 3, "vram"),
            _cue("weak", ErrorCode.FS_FAILED, 1, "file"),
            _cue("other", ErrorCode.NET_FAILED, 3, "socket"),
        ]
    )
    verdict = scores.decide("vram and a file")
    assert verdict is not None
    assert (verdict.code, verdict.cues, verdict.score) == (ErrorCode.VRAM_EXHAUSTED, ("strong",), 3)
    assert scores.decide("a file") is None  # 1 < MIN_SCORE
    assert scores.decide("vram and a socket") is None  # a tie: no lead
    assert MIN_SCORE == 3
    assert MIN_LEAD == 1


def test_the_heaviest_cue_names_the_code() -> None:
    scores = CueScores(
        [
            _cue("words", ErrorCode.PIPELINE_FAILED, 1, "tensor"),
            _cue("shape", ErrorCode.PIPELINE_SHAPE_MISMATCH, 2, "shape"),
        ]
    )
    verdict = scores.decide("tensor shape")
    assert verdict is not None
    assert verdict.code is ErrorCode.PIPELINE_SHAPE_MISMATCH
    assert verdict.cues == ("shape", "words")


def test_a_regex_counts_only_near_its_literal_on_the_same_line(tmp_path: Path) -> None:
    path = tmp_path / "cues.toml"
    path.write_text(
        """
version = 1
[[cue]]
name = "device-memory"
code = "VRAM.EXHAUSTED"
weight = 3
any = ["memory"]
regex = ['gpu[^\\n]{0,20}memory']
""",
        encoding="utf-8",
    )
    scores = load_cues(path)
    assert scores.decide("the gpu has no memory left") is not None
    assert scores.decide("the gpu is fine\nno memory left") is None  # another line
    assert scores.decide("gpu" + " " * 500 + "memory") is None


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ('name = "x"\ncode = "UNKNOWN.ERROR"\nweight = 1\nany = ["a"]', "UNKNOWN"),
        ('name = "x"\ncode = "VRAM.EXHAUSTED"\nweight = 9\nany = ["a"]', "weight"),
        ('name = "x"\ncode = "VRAM.EXHAUSTED"\nweight = 1\nany = ["A"]', "lower case"),
        ('name = "x"\ncode = "VRAM.EXHAUSTED"\nweight = 1\nany = ["a"]\nregex = ["("]', "compile"),
    ],
)
def test_a_bad_cue_file_is_refused_with_the_reason(tmp_path: Path, body: str, names: str) -> None:
    path = tmp_path / "cues.toml"
    path.write_text(f"version = 1\n[[cue]]\n{body}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_cues(path)
    assert names in str(info.value)


def test_duplicate_cue_names_are_refused(tmp_path: Path) -> None:
    cue = 'name = "x"\ncode = "VRAM.EXHAUSTED"\nweight = 1\nany = ["a"]\n'
    path = tmp_path / "cues.toml"
    path.write_text(f"version = 1\n[[cue]]\n{cue}[[cue]]\n{cue}", encoding="utf-8")
    with pytest.raises(ConfigError, match="unique cue names"):
        load_cues(path)


# -- in the categorizer ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "category"),
    [
        # Allocators and runtimes no rule names.
        ("ggml_vulkan: vk::Device::allocateMemory: ErrorOutOfDeviceMemory", "vram_memory"),
        ("error: Insufficient Memory (00000008:kIOGPUCommandBufferCallbackErrorOutOfMemory)",
         "vram_memory"),
        ("Loading checkpoint shards:  75%|███      | 3/4 [01:34<00:31, 31.54s/it]Killed",
         "system_resource"),
        ("fatal: unable to access 'https://github.com/x/y.git/': Recv failure: Connection was "
         "reset", "network"),
        ("ValueError: Unexpected architecture type in GGUF file: 'qwen2vl'", "model_loading"),
        ("RuntimeError: operator torchvision::nms does not exist", "configuration"),
        ("output with shape [1, 8100, 5120] doesn't match the broadcast shape [2, 8100, 5120]",
         "generation_pipeline"),
        ("Video frame count must satisfy 8k+1 (e.g. 97, 193). Got 189", "input_validation"),
    ],
)  # fmt: skip
def test_texts_no_rule_knows_are_read_from_their_words(text: str, category: str) -> None:
    verdict = default_categorizer().categorize(report_from_text(text))
    assert verdict.category is Category(category), verdict
    assert verdict.rule.startswith(CUE_RULE_PREFIX), verdict.rule


@pytest.mark.parametrize(
    "text",
    ["it did not work", "hello world", "Something happened at 10:32", "exit", "the file"],
)
def test_texts_without_enough_words_stay_unknown(text: str) -> None:
    verdict = default_categorizer().categorize(report_from_text(text))
    assert verdict.code is ErrorCode.UNKNOWN_ERROR, verdict


def test_a_rule_is_never_re_decided_by_the_cues() -> None:
    """A text a rule knows keeps the rule's verdict, with or without cues."""
    with_cues = default_categorizer()
    without = Categorizer(with_cues.patterns)
    text = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    report = report_from_text(text)
    assert with_cues.categorize(report) == without.categorize(report)
    assert not with_cues.categorize(report).rule.startswith(CUE_RULE_PREFIX)


def test_a_bare_assertion_is_read_from_its_assert_statement() -> None:
    text = (
        '  File "pipeline.py", line 1443, in prepare_conditioning\n'
        "    assert n_frames % 8 == 1\n"
        "           ^^^^^^^^^^^^^^^^^\n"
        "AssertionError"
    )
    verdict = default_categorizer().categorize(report_from_text(text))
    assert verdict.category is Category.INPUT_VALIDATION, verdict


def _server_traceback(site: str) -> str:
    frames = "".join(
        f'  File "{site}/starlette/{name}.py", line {n}, in wrapped_app\n'
        f"    await app(scope, receive, sender)\n"
        for n, name in enumerate(["middleware/errors", "_exception_handler", "routing"] * 8)
    )
    return f"Traceback (most recent call last):\n{frames}RuntimeError: a bug outside the router"


@pytest.mark.parametrize("extra", range(0, 90, 3))
def test_where_the_tail_is_cut_does_not_change_the_verdict(extra: int) -> None:
    """Found by CI in a checkout at another path: the scanned tail cut a frame line in two,
    and its path ("/venv/lib/python3.11/site-packages/...") became words for a guess."""
    site = "/" + "x" * extra + "/.venv/lib/python3.11/site-packages"
    tb = _server_traceback(site)
    assert len(tb) > 2500  # longer than the tail the rules read
    report = ErrorReport(
        exc_type="RuntimeError", message="a bug outside the router", traceback=tb, stage=Stage.API
    )
    assert "site-packages" not in words_text(report)
    assert default_categorizer().categorize(report).code is ErrorCode.UNKNOWN_ERROR


@pytest.mark.parametrize(
    "where",
    [
        "/home/ana/.venv/lib/python3.11/site-packages",
        "c:\\users\\bo\\appdata\\local\\programs\\python\\python311\\lib",
        "/opt/conda/envs/wan/lib/python3.10",
    ],
)
def test_the_install_folder_is_no_word(where: str) -> None:
    text = f'file "{where}/diffusers/loader.py" cannot load model_index.json from tiny/wan'
    assert words_of(text) == {"file", "load", "model_index", "json", "tiny", "wan"}


def test_a_death_after_a_named_limit_is_the_limit() -> None:
    text = (
        "ERROR: Unexpected bus error encountered in worker. This might be caused by insufficient "
        "shared memory (shm).\n"
        "RuntimeError: DataLoader worker (pid(s) 3216) exited unexpectedly"
    )
    verdict = default_categorizer().categorize(report_from_text(text))
    assert verdict.code is ErrorCode.SYSTEM_RESOURCE_LIMIT, verdict
    assert verdict.rule.startswith("earlier-cause:")


def test_explain_says_when_it_judged_from_words(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "ggml_vulkan: vk::Device::allocateMemory: ErrorOutOfDeviceMemory"]) == 0
    out = capsys.readouterr().out
    assert "[VRAM.EXHAUSTED" in out
    assert "No rule knows this exact error: judged from the words it uses" in out
    assert main(["explain", "CUDA out of memory."]) == 0
    assert "No rule knows" not in capsys.readouterr().out


# -- the word model -------------------------------------------------------------------------


def test_the_shipped_word_model_is_what_the_corpora_train() -> None:
    """config/error_words.json is trained from tests/data (`make error-words`): a corpus
    change without retraining fails here."""
    trained = render(train(corpus_examples(REPO / "tests" / "data")))
    shipped = (REPO / "config" / "error_words.json").read_text(encoding="utf-8")
    assert shipped == trained, "run `make error-words`"


def _model(**rows: list[int]) -> WordModel:
    return WordModel([10] * 8, rows)


def test_a_guess_needs_known_words_and_a_margin() -> None:
    # Categories in order: input, model, vram, pipeline, system, config, fs, network.
    model = _model(
        socket=[0, 0, 0, 0, 0, 0, 0, 8],
        handshake=[0, 0, 0, 0, 0, 0, 1, 7],
        disk=[0, 0, 0, 0, 0, 0, 8, 0],
        runtimeerror=[1, 1, 1, 1, 1, 1, 1, 8],
    )
    guess = model.guess("socket handshake stalled")
    assert guess is not None
    assert (guess.category, guess.code) == (Category.NETWORK, ErrorCode.NET_FAILED)
    assert guess.words[0] in {"socket", "handshake"}
    assert model.guess("socket stalled") is None  # one known word
    assert model.guess("runtimeerror: socket") is None  # a class name is no content word
    assert model.guess("socket disk") is None  # a tie
    assert model.guess("it did not work at all") is None  # function words are no words


def test_a_word_model_file_of_other_categories_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "words.json"
    path.write_text('{"version": 1, "categories": ["a"], "texts": [1], "words": {}}')
    with pytest.raises(ConfigError, match="error_words"):
        WordModel.load(path)


def test_texts_of_programs_no_rule_knows_get_a_guess_that_says_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = "UR_RESULT_ERROR_OUT_OF_RESOURCES while allocating on xpu device"
    verdict = default_categorizer().categorize(report_from_text(text))
    assert verdict.category is Category.VRAM_MEMORY, verdict
    assert verdict.rule.startswith(WORD_RULE_PREFIX)
    assert main(["explain", text]) == 0
    assert "judged from the words it uses (words: " in capsys.readouterr().out


def test_torchrun_rank_prefixes_are_read_through() -> None:
    text = (
        '[rank0]:   File "/x/pipeline.py", line 51, in forward\n'
        "[rank0]:     x = torch.empty(10**13)\n"
        "[rank0]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    )
    report = report_from_text(text)
    assert report.exc_type == "torch.OutOfMemoryError"
    assert default_categorizer().categorize(report).code is ErrorCode.VRAM_EXHAUSTED
