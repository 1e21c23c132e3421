"""Real exceptions, raised here, captured as reports and categorized (tests may import torch;
the supervisor package never does)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pydantic
import pytest
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from supervisor.errors import (
    WORKER_CRASHED_TYPE,
    WORKER_HUNG_TYPE,
    CategorizationContext,
    Category,
    ErrorCode,
    ErrorReport,
    Stage,
    default_categorizer,
    explain,
)

REPO = Path(__file__).resolve().parents[1]


def captured(exc: BaseException, **fields: object) -> ErrorReport:
    report = ErrorReport.from_exception(exc, **fields)  # type: ignore[arg-type]
    # Reports cross the worker boundary as JSON: categorize what arrives, not the original.
    return ErrorReport.model_validate_json(report.model_dump_json())


def test_torch_out_of_memory_is_vram_whatever_the_context() -> None:
    message = (
        "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 23.99 GiB "
        "of which 1.20 GiB is free. Of the allocated memory 21.00 GiB is allocated by PyTorch, "
        "and 100.00 MiB is reserved by PyTorch but unallocated."
    )
    with pytest.raises(torch.OutOfMemoryError) as info:
        raise torch.OutOfMemoryError(message)
    report = captured(info.value, stage=Stage.DENOISE, device="cuda:0")
    assert report.exc_type == "torch.OutOfMemoryError"
    verdict = default_categorizer().categorize(report)
    assert (verdict.category, verdict.code) == (Category.VRAM_MEMORY, ErrorCode.VRAM_EXHAUSTED)
    assert verdict.rule == "type:torch.OutOfMemoryError"
    # Context refines, it never overrides a clear type.
    on_cpu = CategorizationContext(device_kind="cpu", pipeline_on_cpu=True)
    assert default_categorizer().categorize(report, on_cpu).code is ErrorCode.VRAM_EXHAUSTED


def test_fragmented_out_of_memory() -> None:
    message = (
        "CUDA out of memory. Tried to allocate 1.70 GiB. GPU 0 has a total capacity of 6.00 GiB "
        "of which 0 bytes is free. Of the allocated memory 2.93 GiB is allocated by PyTorch, and "
        "2.30 GiB is reserved by PyTorch but unallocated."
    )
    with pytest.raises(torch.OutOfMemoryError) as info:
        raise torch.OutOfMemoryError(message)
    verdict = default_categorizer().categorize(captured(info.value))
    assert verdict.code is ErrorCode.VRAM_FRAGMENTED
    assert verdict.category is Category.VRAM_MEMORY


def test_real_cpu_allocation_failure_depends_on_where_the_pipeline_runs() -> None:
    with pytest.raises(RuntimeError) as info:
        torch.empty(10**15, dtype=torch.uint8)
    report = captured(info.value, stage=Stage.DENOISE)
    categorizer = default_categorizer()
    on_gpu = CategorizationContext(device_kind="cuda", pipeline_on_cpu=False)
    assert categorizer.categorize(report, on_gpu).code is ErrorCode.SYSTEM_HOST_MEMORY
    on_cpu = CategorizationContext(device_kind="cpu", pipeline_on_cpu=True)
    assert categorizer.categorize(report, on_cpu).code is ErrorCode.VRAM_EXHAUSTED
    # Without an explicit context, the report's own device decides.
    cpu_report = report.model_copy(update={"device": "cpu"})
    assert categorizer.categorize(cpu_report).category is Category.VRAM_MEMORY


def test_real_memory_error() -> None:
    with pytest.raises(MemoryError) as info:
        bytearray(10**18)
    verdict = default_categorizer().categorize(captured(info.value, device="cuda:0"))
    assert verdict.code is ErrorCode.SYSTEM_HOST_MEMORY


@pytest.mark.parametrize(
    ("keep", "code"),
    [(lambda n: n // 2, ErrorCode.MODEL_INCOMPLETE), (lambda n: 20, ErrorCode.MODEL_CORRUPTED)],
    ids=["half-file", "header-cut"],
)
def test_real_safetensors_error_from_a_truncated_file(tmp_path: Path, keep, code) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "model.safetensors"
    save_file({"weight": torch.zeros(256)}, str(path))
    data = path.read_bytes()
    path.write_bytes(data[: keep(len(data))])
    with pytest.raises(SafetensorError) as info:
        safe_open(str(path), "pt")
    report = captured(info.value, stage=Stage.LOAD)
    assert report.exc_type.endswith("SafetensorError")
    verdict = default_categorizer().categorize(report)
    assert verdict.category is Category.MODEL_LOADING
    assert verdict.code is code
    assert verdict.rule.startswith("type:")


def test_real_huggingface_hub_error_offline(tmp_path: Path) -> None:
    # HF_HUB_OFFLINE is read when huggingface_hub is imported, so the call runs in a fresh
    # interpreter; its report comes back as JSON, as it would from the worker.
    script = (
        "import sys\n"
        "from huggingface_hub import hf_hub_download\n"
        "from supervisor.errors import ErrorReport, Stage\n"
        "try:\n"
        "    hf_hub_download('genvisor-test/missing-repo', 'model.safetensors',\n"
        "                    cache_dir=sys.argv[1])\n"
        "except Exception as exc:\n"
        "    print(ErrorReport.from_exception(exc, stage=Stage.DOWNLOAD).model_dump_json())\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    report = ErrorReport.model_validate_json(out.stdout.strip().splitlines()[-1])
    assert report.exc_type.startswith("huggingface_hub.errors.")
    verdict = default_categorizer().categorize(report)
    assert (verdict.category, verdict.code) == (Category.NETWORK, ErrorCode.NET_OFFLINE)
    assert verdict.recoverable


def test_real_enospc() -> None:
    with pytest.raises(OSError, match="No space left") as info, open("/dev/full", "w") as fh:  # noqa: PT012
        fh.write("x" * 65536)
        fh.flush()
    report = captured(info.value, stage=Stage.SAVE)
    assert report.errno_name == "ENOSPC"
    verdict = default_categorizer().categorize(report)
    assert (verdict.category, verdict.code) == (Category.FILE_SYSTEM, ErrorCode.FS_DISK_FULL)
    assert verdict.rule == "type:OSError"


def test_real_pydantic_validation_error_by_stage() -> None:
    class Job(pydantic.BaseModel):
        width: int

    with pytest.raises(pydantic.ValidationError) as info:
        Job.model_validate({"width": "wide"})
    categorizer = default_categorizer()
    at_api = captured(info.value, stage=Stage.API)
    assert categorizer.categorize(at_api).code is ErrorCode.INPUT_INVALID
    at_startup = captured(info.value, stage=Stage.STARTUP)
    assert categorizer.categorize(at_startup).code is ErrorCode.CONFIG_INVALID


def test_real_httpx_connection_refused() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        with pytest.raises(httpx.ConnectError) as info:
            httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
    verdict = default_categorizer().categorize(captured(info.value, stage=Stage.DOWNLOAD))
    assert (verdict.category, verdict.code) == (Category.NETWORK, ErrorCode.NET_OFFLINE)


def test_worker_death_reports() -> None:
    categorizer = default_categorizer()
    crashed = ErrorReport(
        exc_type=WORKER_CRASHED_TYPE, context={"signal": 9, "exit_code": -9, "pid": 4242}
    )
    verdict = categorizer.categorize(crashed)
    assert verdict.code is ErrorCode.WORKER_CRASHED
    assert verdict.poisons_context
    assert verdict.recoverable
    assert "signal 9" in explain(crashed, verdict).message
    hung = categorizer.categorize(ErrorReport(exc_type=WORKER_HUNG_TYPE))
    assert hung.code is ErrorCode.WORKER_HUNG
    oom_killed = ErrorReport(
        exc_type=WORKER_CRASHED_TYPE, context={"signal": 9, "oom_killed": True}
    )
    assert categorizer.categorize(oom_killed).code is ErrorCode.SYSTEM_HOST_MEMORY


def test_accelerator_error_uses_its_wording_and_defaults_to_a_poisoned_context() -> None:
    categorizer = default_categorizer()
    illegal = ErrorReport(
        exc_type="torch.AcceleratorError",
        mro_names=("torch.AcceleratorError", "RuntimeError", "Exception"),
        message="CUDA error: an illegal memory access was encountered",
    )
    verdict = categorizer.categorize(illegal)
    assert verdict.code is ErrorCode.PIPELINE_CUDA_CONTEXT
    assert verdict.poisons_context
    oom = illegal.model_copy(update={"message": "CUDA error: out of memory"})
    assert categorizer.categorize(oom).code is ErrorCode.VRAM_EXHAUSTED
    odd = illegal.model_copy(update={"message": "CUDA error: something new"})
    assert categorizer.categorize(odd).code is ErrorCode.PIPELINE_CUDA_CONTEXT


def test_summary_is_json_serializable() -> None:
    verdict = default_categorizer().categorize(ErrorReport(exc_type="", message="HeaderTooLarge"))
    assert json.loads(json.dumps(verdict.as_summary()))["code"] == "MODEL.CORRUPTED"


def _load_like_diffusers() -> None:
    """The shape diffusers' `load_state_dict` gives a failed read: it re-reads the file as text
    while handling the first error, and raises a corrupted-file wording from there."""
    try:
        try:
            bytearray(10**18)
        except MemoryError:
            b"\xff".decode("utf-8")
    except UnicodeDecodeError:
        raise OSError(  # noqa: B904 - diffusers raises without `from`, as here
            "Unable to load weights from checkpoint file for 'x.safetensors' at 'x'. "
        )


def test_an_error_raised_while_handling_an_out_of_memory_is_memory() -> None:
    with pytest.raises(OSError, match="Unable to load weights") as info:
        _load_like_diffusers()
    report = captured(info.value, stage=Stage.LOAD, device="cpu")
    assert report.cause_types == ("UnicodeDecodeError", "MemoryError")
    verdict = default_categorizer().categorize(report)
    assert verdict.code is ErrorCode.VRAM_EXHAUSTED  # the CPU pipeline's memory ran out
    assert verdict.rule.startswith("cause:MemoryError")
    gpu = default_categorizer().categorize(report.model_copy(update={"device": "cuda:0"}))
    assert gpu.code is ErrorCode.SYSTEM_HOST_MEMORY
    # The same words without the out-of-memory underneath stay a model-file problem.
    alone = report.model_copy(update={"cause_types": ()})
    assert default_categorizer().categorize(alone).category is Category.MODEL_LOADING
