"""User-facing messages: real facts in templates, safe fallbacks, applied recovery, safe HTML,
and the `genvisor explain` command."""

from __future__ import annotations

import io
import json
import re

import pytest

from supervisor.cli.main import main
from supervisor.errors import (
    ErrorCode,
    ErrorReport,
    Stage,
    UserError,
    default_catalog,
    default_categorizer,
    explain,
    last_exception_text,
    report_from_text,
)

OOM = (
    "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 14.20 GiB. GPU 0 has a total "
    "capacity of 15.99 GiB of which 11.80 GiB is free. Of the allocated memory 3.00 GiB is "
    "allocated by PyTorch, and 20.00 MiB is reserved by PyTorch but unallocated."
)
HOSTILE = '<script>alert("x")</script>'


def test_message_carries_required_and_free_memory_and_device_name() -> None:
    report = report_from_text(OOM, stage=Stage.DENOISE, device="cuda:0")
    user = explain(report, facts={"device_name": "NVIDIA RTX 4080", "width": 1280, "height": 720})
    assert user.code is ErrorCode.VRAM_EXHAUSTED
    assert "14.2 GiB" in user.message
    assert "11.8 GiB" in user.message
    assert "NVIDIA RTX 4080" in user.message
    assert "NVIDIA RTX 4080" in user.title
    assert any("1280x720" in s for s in user.suggestions)


def test_the_error_s_own_words_beat_caller_facts() -> None:
    report = report_from_text(OOM)
    user = explain(report, facts={"requested_bytes": 1, "free_bytes": 2})
    assert "14.2 GiB" in user.message
    assert "11.8 GiB" in user.message


def test_missing_variables_fall_back_without_crashing() -> None:
    catalog = default_catalog()
    for code in ErrorCode:
        report = ErrorReport(exc_type="", message="")
        verdict = default_categorizer().categorize(report)
        user = explain(report, verdict.__class__.of(code, "test"), catalog=catalog)
        for text in (user.title, user.message, *user.suggestions):
            assert text, code
            assert not re.search(r"\{\w*\}", text), (code, text)
            assert "(unknown)" not in text, (code, text)
        assert len(user.suggestions) <= 7


def test_applied_actions_are_reported_not_suggested() -> None:
    report = report_from_text(OOM)
    plain = explain(report)
    applied = explain(report, applied=["enable_vae_tiling", "restart_worker"])
    ids = [s.id for s in default_catalog().entry(ErrorCode.VRAM_EXHAUSTED).suggestions]
    assert ids[0] == "enable_vae_tiling"
    assert len(applied.suggestions) == len(plain.suggestions) - 1
    assert not any("VAE tiling" in s for s in applied.suggestions)
    assert applied.applied_recovery == [
        "Enabled VAE tiling and retried",
        "Restarted the generation worker",
    ]


@pytest.mark.parametrize(
    ("device", "stage", "shown", "hidden"),
    [
        ("cuda:0", Stage.DECODE, ["VAE tiling", "CPU offload", "other programs"], ["a lot of RAM"]),
        ("cuda:0", Stage.LOAD, ["CPU offload"], ["VAE tiling", "fewer frames", "resolution"]),
        ("cpu", Stage.DECODE, ["VAE tiling", "a lot of RAM"], ["GPU"]),
        ("cpu", Stage.LOAD, ["a lot of RAM", "smaller model"], ["GPU", "VAE tiling", "frames"]),
    ],
)
def test_suggestions_fit_the_device_and_the_stage_that_failed(
    device: str, stage: Stage, shown: list[str], hidden: list[str]
) -> None:
    report = ErrorReport(
        exc_type="MemoryError", message="", stage=stage, device=device, job_id="j1"
    )
    verdict = default_categorizer().categorize(report)
    user = explain(report, verdict.__class__.of(ErrorCode.VRAM_EXHAUSTED, "test"))
    text = " ".join(user.suggestions)
    for words in shown:
        assert words.lower() in text.lower(), (words, user.suggestions)
    for words in hidden:
        assert words.lower() not in text.lower(), (words, user.suggestions)


def test_a_load_on_a_cpu_says_what_it_needs_and_what_the_cap_leaves() -> None:
    report = ErrorReport(
        exc_type="MemoryError", stage=Stage.LOAD, device="cpu", context={"model": "wan"}
    )
    facts = {"load_required": "934.9 MiB", "available": "638.4 MiB", "memory_limit": "1.5 GiB"}
    user = explain(report, facts=facts)
    assert user.code is ErrorCode.VRAM_EXHAUSTED
    assert user.message == (
        "Loading wan needs about 934.9 MiB of memory, but the memory limit (1.5 GiB) leaves "
        "638.4 MiB for it on cpu."
    )
    assert "now 1.5 GiB" in user.suggestions[0]


def _refusal(message: str) -> UserError:
    """A pre-flight refusal as the job flow explains it (supervisor/supervision/job_flow.py)."""
    report = ErrorReport(
        exc_type="supervisor.recovery.memory.PreflightRefused",
        message=f"not enough memory: {message}",
        stage=Stage.LOAD,
        device="cpu",
        job_id="j1",
    )
    verdict = (
        default_categorizer()
        .categorize(report)
        .__class__.of(ErrorCode.VRAM_EXHAUSTED, rule="preflight")
    )
    return explain(report, verdict, facts={"width": 1280, "height": 1280})


def test_a_refusal_says_its_numbers_and_a_size_that_could_fit() -> None:
    user = _refusal(
        "needs ~13.8 GiB even at the last rung (fewer_steps), peaking at decode; 1.1 GiB free "
        "minus a 256.0 MiB reserve leaves 896.1 MiB"
    )
    assert "13.8 GiB" in user.message  # the estimate
    assert "896.1 MiB" in user.message  # what the limit leaves
    assert "1.1 GiB free, less a 256.0 MiB reserve" in user.message
    assert "peaking at decode" in user.message
    assert "fewer steps" in user.message  # the ladder was walked to its end
    text = " ".join(user.suggestions)
    # sqrt(896.1 MiB / 13.8 GiB) x 1280 = 321: the size, on Wan's multiple, that could fit.
    assert "320x320 or less (now 1280x1280)" in text
    assert "14B" not in text  # the model may be tiny: no advice about Wan's big variants
    assert "GPU" not in text
    assert "CPU offload" not in text
    assert "VAE tiling" not in text  # the ladder tried it already
    assert "device_memory_limit" in text


def test_a_refusal_at_load_suggests_no_size() -> None:
    user = _refusal(
        "needs ~3.0 GiB as asked, peaking at load; 1.1 GiB free minus a 256.0 MiB reserve "
        "leaves 896.1 MiB"
    )
    assert "3.0 GiB" in user.message
    assert "896.1 MiB" in user.message
    text = " ".join(user.suggestions)
    assert "resolution" not in text
    assert "frames" not in text
    assert "device_memory_limit" in text
    assert "smaller model" in text


def test_html_escapes_every_user_and_error_string() -> None:
    report = ErrorReport(
        exc_type="OSError",
        message=f"[Errno 28] No space left on device: '/out/{HOSTILE}.mp4'",
        errno=28,
        job_id=f"job-{HOSTILE}",
        device=HOSTILE,
        traceback=f'File "{HOSTILE}.py"',
        context={"prompt": HOSTILE},
    )
    user = explain(report, facts={"device_name": HOSTILE, "model": HOSTILE})
    assert HOSTILE in user.message  # the JSON form keeps the text as it is
    page = user.to_html()
    assert "<script" not in page
    assert "</script" not in page
    assert "&lt;script&gt;" in page
    assert "&quot;x&quot;" in page
    # The only tags are the fragment's own.
    assert set(re.findall(r"</?([a-z0-9]+)", page)) <= {
        "div", "h3", "p", "ul", "li", "details", "summary", "dl", "dt", "dd", "pre",
    }  # fmt: skip


def test_user_error_round_trips_through_json() -> None:
    user = explain(report_from_text(OOM), applied=["lower_resolution"])
    again = UserError.model_validate_json(user.model_dump_json())
    assert again == user
    assert set(json.loads(user.model_dump_json())) == {
        "code", "category", "severity", "title", "message", "suggestions",
        "applied_recovery", "technical", "job_id", "ts",
    }  # fmt: skip


CHAINED = """Traceback (most recent call last):
  File "/venv/lib/python3.11/site-packages/huggingface_hub/file_download.py", line 1484, in _raise
    raise LocalEntryNotFoundError(
huggingface_hub.errors.LocalEntryNotFoundError: An error happened while trying to locate the file
on the Hub and we cannot find the requested files in the local cache.

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "/app/load.py", line 9, in <module>
    with safe_open(path, framework="pt") as f:
safetensors_rust.SafetensorError: Error while deserializing header: MetadataIncompleteBuffer
"""


def test_traceback_text_uses_the_last_exception() -> None:
    assert last_exception_text(CHAINED) == (
        "safetensors_rust.SafetensorError: Error while deserializing header: "
        "MetadataIncompleteBuffer"
    )
    report = report_from_text(CHAINED)
    assert report.exc_type == "safetensors_rust.SafetensorError"
    assert report.traceback.startswith("Traceback")
    assert default_categorizer().categorize(report).code is ErrorCode.MODEL_INCOMPLETE
    assert last_exception_text("CUDA error: out of memory") == "CUDA error: out of memory"


def test_cli_json_from_argument(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["explain", "--json", OOM]) == 0
    out = json.loads(capsys.readouterr().out)
    user = explain(report_from_text(OOM))
    assert out == {
        "category": "vram_memory",
        "severity": "high",
        "code": "VRAM.EXHAUSTED",
        "recoverable": True,
        "title": "Not enough memory on GPU 0",
        "message": user.message,
        "suggestions": user.suggestions,
    }
    assert "14.2 GiB" in out["message"]
    assert out["suggestions"][0].startswith("Enable VAE tiling")


def test_cli_reads_a_traceback_from_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(CHAINED))
    assert main(["explain"]) == 0
    out = capsys.readouterr().out
    assert "A model file is incomplete" in out
    assert "MODEL.INCOMPLETE" in out


def test_cli_lines_gives_one_json_object_per_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = "OSError: [Errno 30] Read-only file system: '/usr'\n\nHeaderTooLarge\nnothing known\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    assert main(["explain", "--lines"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["code"] for r in rows] == ["FS.READ_ONLY", "MODEL.CORRUPTED", "UNKNOWN.ERROR"]
    keys = {"category", "severity", "code", "recoverable", "title", "message", "suggestions"}
    assert all(set(r) == keys for r in rows)


def test_cli_refuses_empty_input(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("  \n"))
    assert main(["explain"]) == 2
    assert "no error text" in capsys.readouterr().err


def test_a_connection_reset_is_a_network_failure_not_a_cache_statement(
    capsys: pytest.CaptureFixture[str],
) -> None:
    text = (
        "urllib3.exceptions.ProtocolError: ('Connection aborted.', "
        "ConnectionResetError(104, 'Connection reset by peer'))"
    )
    assert main(["explain", "--json", text]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["category"], out["code"]) == ("network", "NET.CONNECTION_LOST")
    assert "cache" not in out["message"].lower()
    # Unreachable is said as unreachable, with no claim about what the cache holds.
    offline = explain(
        report_from_text(
            "requests.exceptions.ConnectionError: Failed to establish "
            "a new connection: [Errno 111] Connection refused"
        )
    )
    assert offline.code is ErrorCode.NET_OFFLINE
    assert "not in the local cache" not in offline.message


def test_a_damaged_sqlite_file_is_explained(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["explain", "--json", "sqlite3.DatabaseError: database disk image is malformed"]) == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert (out["category"], out["code"]) == ("file_system", "STORE.CORRUPTED")
    assert any("moves a damaged one aside" in s for s in out["suggestions"])
