"""Rule files, facts, stability of codes across interpreters, and the torch-free import."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from supervisor.core.exceptions import ConfigError
from supervisor.errors import (
    CODE_SPECS,
    Categorizer,
    Category,
    ErrorCode,
    ErrorReport,
    MessageCatalog,
    default_categorizer,
    extract_facts,
    format_bytes,
)
from supervisor.errors.pattern_rules import load_pattern_rules
from supervisor.errors.report import Stage

REPO = Path(__file__).resolve().parents[1]


def test_every_code_has_a_spec_a_category_and_a_catalog_entry() -> None:
    assert set(CODE_SPECS) == set(ErrorCode)
    assert {code.category for code in ErrorCode} == set(Category)
    for code in ErrorCode:
        assert code.value == code.value.upper()
        assert "." in code.value
    MessageCatalog.from_config()  # raises when an entry is missing


def test_default_rules_compile_and_are_ordered(tmp_path: Path) -> None:
    rules = default_categorizer().patterns.rules
    names = [r.name for r in rules]
    assert len(names) == len(set(names)) >= 30
    # Specific before general: a cache miss while offline is not a missing repository.
    assert names.index("hub-offline-cache-miss") < names.index("hub-repo-missing")
    assert names.index("hub-repo-missing") < names.index("hub-gated")


@pytest.mark.parametrize(
    "body",
    [
        'version = 1\n[[rule]]\nname = "x"\ncode = "NOT.A_CODE"\nany = ["x"]\n',
        'version = 1\n[[rule]]\nname = "x"\ncode = "FS.IO_ERROR"\nany = ["Upper"]\n',
        'version = 1\n[[rule]]\nname = "x"\ncode = "FS.IO_ERROR"\nany = ["x"]\nregex = ["("]\n',
        'version = 1\n[[rule]]\nname = "x"\ncode = "FS.IO_ERROR"\nany = ["x"]\n'
        '[[rule]]\nname = "x"\ncode = "FS.IO_ERROR"\nany = ["y"]\n',
        "not toml at all [",
    ],
    ids=["bad-code", "upper-literal", "bad-regex", "duplicate", "syntax"],
)
def test_bad_rule_files_are_config_errors(tmp_path: Path, body: str) -> None:
    path = tmp_path / "rules.toml"
    path.write_text(body)
    with pytest.raises(ConfigError):
        load_pattern_rules(path)


def test_a_custom_rule_file_is_used(tmp_path: Path) -> None:
    path = tmp_path / "rules.toml"
    path.write_text('[[rule]]\nname = "flux"\ncode = "INPUT.PROMPT"\nany = ["flux capacitor"]\n')
    verdict = Categorizer.from_config(path).categorize(
        ErrorReport(exc_type="", message="Flux capacitor overloaded")
    )
    assert (verdict.code, verdict.rule) == (ErrorCode.INPUT_PROMPT, "pattern:flux")


def test_memory_facts_old_new_mps_and_cpu_formats() -> None:
    new = extract_facts(
        "CUDA out of memory. Tried to allocate 26.00 MiB. GPU 1 has a total capacity of 44.43 GiB "
        "of which 19.00 MiB is free. and 41.95 MiB is reserved by PyTorch but unallocated."
    )
    assert new["requested_bytes"] == 26 * 1024**2
    assert new["device_index"] == 1
    assert new["free_bytes"] == 19 * 1024**2
    old = extract_facts(
        "CUDA out of memory. Tried to allocate 2.26 GiB (GPU 0; 6.00 GiB total capacity; "
        "781.59 MiB already allocated; 3.03 GiB free; 1.24 GiB reserved in total by PyTorch)"
    )
    assert format_bytes(old["total_bytes"]) == "6.0 GiB"  # type: ignore[arg-type]
    mps = extract_facts(
        "MPS backend out of memory (MPS allocated: 9.57 GiB, other allocations: 17.35 GiB, max "
        "allowed: 27.20 GiB). Tried to allocate 292.50 MiB on private pool."
    )
    assert format_bytes(mps["free_bytes"]) == "286.7 MiB"  # type: ignore[arg-type]
    cpu = extract_facts(
        "DefaultCPUAllocator: can't allocate memory: you tried to allocate 1024 bytes."
    )
    assert cpu == {"requested_bytes": 1024}
    path = extract_facts("[Errno 28] No space left on device: '/Data/Out.mp4'")
    assert path["path"] == "/Data/Out.mp4"


def test_errno_and_http_status_from_text() -> None:
    categorizer = default_categorizer()
    text = ErrorReport(exc_type="", message="[Errno 13] Permission denied: '/x'")
    assert categorizer.categorize(text).rule == "errno:13"
    status = ErrorReport(exc_type="HfHubHTTPError", message="504 Server Error: Gateway Time-out")
    verdict = categorizer.categorize(status)
    assert (verdict.code, verdict.rule) == (ErrorCode.NET_SERVER_ERROR, "type:HfHubHTTPError")


STABILITY_SCRIPT = """
import json, tomllib, sys
from supervisor.errors import default_categorizer, report_from_text
with open(sys.argv[1], "rb") as fh:
    cases = tomllib.load(fh)["case"]
c = default_categorizer()
print(json.dumps([c.categorize(report_from_text(k["text"])).code.value for k in cases]))
"""


def _codes_in_fresh_interpreter(seed: str) -> list[str]:
    env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO)}
    corpus = str(REPO / "tests" / "data" / "error_corpus.toml")
    out = subprocess.run(
        [sys.executable, "-c", STABILITY_SCRIPT, corpus],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    codes: list[str] = json.loads(out.stdout)
    return codes


def test_codes_are_identical_across_interpreters_with_different_hash_seeds() -> None:
    first = _codes_in_fresh_interpreter("1")
    second = _codes_in_fresh_interpreter("4242")
    assert first == second
    assert len(set(first)) >= 20


def test_importing_the_taxonomy_does_not_import_heavy_libraries() -> None:
    script = (
        "import sys, supervisor.errors, supervisor.cli.explain_cmd\n"
        "from supervisor.errors import default_categorizer, explain, report_from_text\n"
        "explain(report_from_text('torch.OutOfMemoryError: CUDA out of memory'))\n"
        "heavy = ('torch', 'diffusers', 'transformers', 'safetensors', 'huggingface_hub')\n"
        "print([m for m in heavy if m in sys.modules])\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == "[]"


# Seen on an NVIDIA H200 under device_memory_limit = "486MiB" (bench/device_check.py, first
# run, 2026-11-30): torch names the per-process allowance; the device's own free memory
# (138.63 GiB) is beside the point.
_H200_CAPPED = (
    "CUDA out of memory. Tried to allocate 126.00 MiB. GPU 0 has a total capacity of 139.80 GiB "
    "of which 138.63 GiB is free. Including non-PyTorch memory, this process has 1.16 GiB memory "
    "in use. 486.00 MiB allowed; Of the allocated memory {allocated} MiB is allocated by "
    "PyTorch, and {reserved} MiB is reserved by PyTorch but unallocated. If reserved but "
    "unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True "
    "to avoid fragmentation."
)


def test_a_capped_cuda_oom_is_told_against_the_cap_not_the_device() -> None:
    from supervisor.errors.user_error import explain

    text = _H200_CAPPED.format(allocated="420.80", reserved="2.20")
    report = ErrorReport(
        exc_type="torch.OutOfMemoryError", message=text, stage=Stage.DENOISE, device="cuda:0"
    )
    error = explain(report)
    assert error.code == ErrorCode.VRAM_EXHAUSTED
    assert "memory limit (486.0 MiB" in error.message
    assert "138" not in error.message  # not the device's free memory


def test_a_capped_cuda_oom_with_its_reserve_in_pieces_is_fragmentation() -> None:
    from supervisor.errors.user_error import explain

    # The H200's own text: 127.2 MiB reserved but unallocated, 126 MiB asked, 486 MiB allowed.
    text = _H200_CAPPED.format(allocated="304.80", reserved="127.20")
    report = ErrorReport(
        exc_type="torch.OutOfMemoryError", message=text, stage=Stage.DENOISE, device="cuda:0"
    )
    assert explain(report).code == ErrorCode.VRAM_FRAGMENTED


@pytest.mark.parametrize(
    ("text", "code"),
    [
        # Python 2's WindowsError keeps the number, whatever the language of the words.
        ("WindowsError: [Error 32] The process cannot access the file", ErrorCode.FS_IN_USE),
        ("WindowsError: [Error 5] Zugriff verweigert: 'C:\\\\x'", ErrorCode.FS_PERMISSION),
        # A lazy module (diffusers, transformers) names itself without quotes: a version too old.
        (
            "AttributeError: module diffusers has no attribute WanPipeline",
            ErrorCode.CONFIG_INCOMPATIBLE_VERSIONS,
        ),
        # PyTorch's asynchronous CUDA allocator says no more than this.
        ("!!! Exception during processing !!! Allocation on device", ErrorCode.VRAM_EXHAUSTED),
        # diffusers' from_pretrained on a folder that lacks a component of the pipeline.
        (
            "Pipeline <class 'X'> expected {'vae', 'tokenizer'}, but only {'vae'} were passed.",
            ErrorCode.MODEL_LOAD_FAILED,
        ),
        # CUDA's invalid kernel image: kernels built for other GPUs, in every library's words.
        (
            "CUDA_ERROR_INVALID_IMAGE: device kernel image is invalid",
            ErrorCode.CONFIG_UNSUPPORTED_HARDWARE,
        ),
    ],
)
def test_library_phrases_and_numbers_that_generalize(text: str, code: ErrorCode) -> None:
    from supervisor.errors import report_from_text

    assert default_categorizer().categorize(report_from_text(text)).code is code
