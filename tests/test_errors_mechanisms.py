"""Rules written by error mechanism, checked on real exceptions raised here and on the public
texts (tests/data/error_realworld.toml) each mechanism was written from."""

from __future__ import annotations

import pickle
import tomllib
from pathlib import Path

import pytest

from supervisor.errors import ErrorCode, ErrorReport, default_categorizer, report_from_text

torch = pytest.importorskip("torch")

CORPUS = Path(__file__).parent / "data" / "error_realworld.toml"


def _code_of(exc: BaseException) -> ErrorCode:
    return default_categorizer().categorize(ErrorReport.from_exception(exc)).code


def _load_error(path: Path) -> BaseException:
    try:
        torch.load(path)
    except Exception as exc:  # noqa: BLE001 - the point is which exception torch raises
        return exc
    raise AssertionError(f"torch.load({path}) did not fail")


class _Custom:
    pass


def test_checkpoints_empty_not_a_pickle_or_with_foreign_objects(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    # An empty (never finished) download: pickle's EOFError inside torch.load's frames.
    assert _code_of(_load_error(empty)) is ErrorCode.MODEL_INCOMPLETE
    page = tmp_path / "page.pt"
    page.write_bytes(b"<html>Bad gateway</html>")
    # Bytes that are no pickle at all: damaged, not refused as unsafe.
    assert _code_of(_load_error(page)) is ErrorCode.MODEL_CORRUPTED
    foreign = tmp_path / "foreign.pt"
    torch.save({"obj": _Custom()}, foreign)
    assert _code_of(_load_error(foreign)) is ErrorCode.MODEL_UNSAFE_FORMAT
    cut = tmp_path / "cut.pt"
    torch.save({"w": torch.zeros(1000)}, cut)
    cut.write_bytes(cut.read_bytes()[:2000])
    assert _code_of(_load_error(cut)) in {ErrorCode.MODEL_CORRUPTED, ErrorCode.MODEL_INCOMPLETE}


def test_an_eof_outside_a_checkpoint_load_is_not_a_model_file() -> None:
    # The same words from a pipe between processes, or any other pickle: the frames decide.
    with pytest.raises(EOFError) as caught:
        pickle.loads(b"")
    assert _code_of(caught.value) is not ErrorCode.MODEL_INCOMPLETE


def _case(source: str) -> dict[str, str]:
    with CORPUS.open("rb") as fh:
        cases: list[dict[str, str]] = tomllib.load(fh)["case"]
    return next(c for c in cases if c["source"] == source)


@pytest.mark.parametrize(
    ("source", "code"),
    [
        # The last line is a consequence ("Broken pipe"); the line before it names the cause.
        ("https://github.com/tnwei/vqgan-clip-app/pull/2", ErrorCode.CONFIG_MISSING_DEPENDENCY),
        # An OSError without a number, raised in an SSL handshake: a connection not made.
        ("https://github.com/taishan1994/W2NER_predict/issues/15", ErrorCode.NET_OFFLINE),
        # A loader's "Failed to load model" around a timeout: the timeout decides.
        ("https://github.com/Bing-su/adetailer/issues/321", ErrorCode.NET_TIMEOUT),
        # torch.load of an empty checkpoint, pasted with its frames.
        ("https://github.com/genforce/genforce/issues/10", ErrorCode.MODEL_INCOMPLETE),
        # A repo id that is a Windows path: not a model the Hub can have.
        ("https://github.com/huggingface/trl/issues/4323", ErrorCode.MODEL_NOT_FOUND),
        # diffusers: a checkpoint tensor whose shape is not the model's.
        ("https://github.com/levihsu/OOTDiffusion/issues/34", ErrorCode.MODEL_WEIGHTS_MISMATCH),
        # ggml: cudaMalloc out of memory, then "error loading model": the memory decides.
        ("https://github.com/ggml-org/llama.cpp/issues/20431", ErrorCode.VRAM_EXHAUSTED),
        # Rust's "(os error 112)" beside a Windows path: ERROR_DISK_FULL, not Linux's EHOSTDOWN.
        ("https://github.com/thewh1teagle/vibe/issues/651", ErrorCode.FS_DISK_FULL),
        # ROCm's "no code object" for this GPU: the build has no kernels for it.
        (
            "https://github.com/easydiffusion/easydiffusion/issues/1477",
            ErrorCode.CONFIG_UNSUPPORTED_HARDWARE,
        ),
        # ggml's own assertion on a tensor's dims, nothing else said.
        ("https://github.com/ggml-org/llama.cpp/issues/8246", ErrorCode.PIPELINE_FAILED),
        # kohya: "Please verify arguments".
        ("https://github.com/bmaltais/kohya_ss/issues/3374", ErrorCode.INPUT_INVALID),
        # safetensors' IoError(Os { code: 1224 }) on Windows: a file mapped by another process.
        ("https://github.com/bmaltais/kohya_ss/issues/2466", ErrorCode.FS_IN_USE),
        # An error of the ffmpeg subprocess, and a broken pipe to it.
        (
            "https://github.com/Kosinkadink/ComfyUI-VideoHelperSuite/issues/267",
            ErrorCode.PIPELINE_FAILED,
        ),
        (
            "https://github.com/Kosinkadink/ComfyUI-VideoHelperSuite/issues/35",
            ErrorCode.PIPELINE_FAILED,
        ),
        # EMFILE: the process's limit of open files.
        (
            "https://github.com/WZMIAOMIAO/deep-learning-for-image-processing/issues/845",
            ErrorCode.SYSTEM_TOO_MANY_OPEN_FILES,
        ),
        # uvicorn's bind refused with WinError 10013: a port Windows reserves or another holds.
        (
            "https://github.com/YanWenKun/Hunyuan3D-2-WinPortable/issues/18",
            ErrorCode.CONFIG_PORT_IN_USE,
        ),
        # A shell's segmentation fault in Spanish.
        ("https://github.com/Comfy-Org/ComfyUI/issues/9837", ErrorCode.WORKER_CRASHED),
        # torch's data loader received no file descriptors: the open-files limit.
        ("https://github.com/lzccccc/SMOKE/issues/21", ErrorCode.SYSTEM_RESOURCE_LIMIT),
        # requests' ProxyError, whatever errno its cause carries.
        ("https://github.com/AILab-CVC/YOLO-World/issues/521", ErrorCode.NET_OFFLINE),
    ],
)
def test_mechanisms_on_the_texts_they_were_written_from(source: str, code: ErrorCode) -> None:
    case = _case(source)
    assert case["split"] == "dev"
    verdict = default_categorizer().categorize(report_from_text(case["text"]))
    assert verdict.code is code, (verdict.code, verdict.rule)
