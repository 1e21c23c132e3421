"""Categorization speed and accuracy over the real-error corpus.

Prints one JSON object on its last line: median_us, p99_us (every report), text_median_us
(message only, no exception type), type_median_us (reports captured from real exceptions),
accuracy (category accuracy on the corpus), code_accuracy, cases.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from supervisor.errors import ErrorReport, Stage, default_categorizer, report_from_text  # noqa: E402

ROUNDS = 60


def corpus() -> list[dict[str, str]]:
    with (ROOT / "tests" / "data" / "error_corpus.toml").open("rb") as fh:
        cases: list[dict[str, str]] = tomllib.load(fh)["case"]
    return cases


def real_exception_reports() -> list[ErrorReport]:
    """Reports captured from exceptions actually raised here (the worker side's view)."""
    import pydantic
    import torch
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import save_file

    reports: list[ErrorReport] = []

    def capture(exc: BaseException, stage: Stage = Stage.UNKNOWN) -> None:
        reports.append(ErrorReport.from_exception(exc, stage=stage, device="cuda:0"))

    try:
        raise torch.OutOfMemoryError(
            "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
            "23.99 GiB of which 1.20 GiB is free."
        )
    except torch.OutOfMemoryError as exc:
        capture(exc, Stage.DENOISE)
    try:
        torch.empty(10**15, dtype=torch.uint8)
    except RuntimeError as exc:
        capture(exc, Stage.DENOISE)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "w.safetensors"
        save_file({"w": torch.zeros(64)}, str(path))
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        try:
            safe_open(str(path), "pt")
        except SafetensorError as exc:
            capture(exc, Stage.LOAD)
    try:
        with open("/dev/full", "w") as fh:
            fh.write("x" * 65536)
    except OSError as exc:
        capture(exc, Stage.SAVE)

    class Job(pydantic.BaseModel):
        width: int

    try:
        Job.model_validate({"width": "wide"})
    except pydantic.ValidationError as exc:
        capture(exc, Stage.API)
    try:
        bytearray(10**18)
    except MemoryError as exc:
        capture(exc)
    return reports


def timed(reports: list[ErrorReport]) -> list[float]:
    categorize = default_categorizer().categorize
    samples: list[float] = []
    clock = time.perf_counter_ns
    for _ in range(ROUNDS):
        for report in reports:
            start = clock()
            categorize(report)
            samples.append((clock() - start) / 1000)
    return samples


def percentile(samples: list[float], share: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> None:
    cases = corpus()
    parsed = [report_from_text(c["text"]) for c in cases]
    text_only = [ErrorReport(exc_type="", message=r.message) for r in parsed]
    typed = real_exception_reports()
    categorizer = default_categorizer()
    verdicts = [categorizer.categorize(r) for r in parsed]
    right_category = sum(v.category == c["category"] for v, c in zip(verdicts, cases, strict=True))
    right_code = sum(v.code == c["code"] for v, c in zip(verdicts, cases, strict=True))
    timed(parsed)  # warm-up: regex caches, branch predictors
    every = timed(parsed + typed)
    figures = {
        "median_us": round(statistics.median(every), 2),
        "p99_us": round(percentile(every, 0.99), 2),
        "text_median_us": round(statistics.median(timed(text_only)), 2),
        "type_median_us": round(statistics.median(timed(typed)), 2),
        "accuracy": round(right_category / len(cases), 4),
        "code_accuracy": round(right_code / len(cases), 4),
        "cases": len(cases),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
