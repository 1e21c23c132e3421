"""Device check: what genvisor does on a CUDA GPU, in one run of a few minutes (issue 17).

    python bench/device_check.py [--device cuda:0]

Everything goes through genvisor's own code: an in-process `Runtime` (the control process: it
never imports torch) with its real worker process, jobs submitted as the API submits them, and
each part's figures read from the job's events and stored result. The parts:

- ``env`` / ``nvml_vs_torch`` (a subprocess that imports torch): the device, torch, diffusers
  and the driver; then genvisor's `NvmlSource` (what the VRAM monitor publishes) against
  `torch.cuda.mem_get_info` before and after a 4 GiB allocation, on the same device.
- ``tiny_wan``: tiny-wan on the device with ``dtype = "auto"`` (bfloat16 on a GPU), one cold
  and several warm 32x32x5 jobs (2 steps): wall time from submit to ``job.succeeded``, the
  worker's own stage time, the overhead (the difference) and its ratio; then one 480x832x33
  and one 480x832x5 job with no cap; the latter's measured peak sizes the decode-only cap.
- ``oom_ladder``: a wide tiny-wan (real Wan components; its transformer's feed-forward layers
  widened to about 1 GiB of bfloat16 weights in 32 blocks), registered under a name with no
  memory profile so that pre-flight cannot plan ahead, run under ``device_memory_limit`` (the
  worker applies `torch.cuda.set_per_process_memory_fraction`) below its fp8 weights: the
  first attempt runs out of memory for real (a 16x16, one-frame job: one latent token, so the
  weights are what does not fit) and the supervisor walks the ladder (free caches, layerwise
  fp8, offload rungs) until it fits.
- ``decode_only``: tiny-wan (again under a profile-less name) at 480x832x5 under a cap at 55 %
  of its measured peak: the VAE decode runs out of memory, and the retry decodes the saved
  latents with tiling (``decode_only`` changes) without denoising again.
- ``two_experts``: Wan 2.2 A14B's shape (the tiny two-expert builds): a text job, an image job
  from a first frame and a first-last-frame job, each with the expert of every denoising step.
- ``expert_offload``: the expert-offload rung's mechanism (`keep_active_expert_only`): the
  tiny two-expert model with both experts on the GPU, then with only the active one there; the
  device of each expert after every step, and each run's peak (skipped on a CPU).

With ``--device cpu`` the same flow runs here (a smoke test of the script: there is no CUDA
out-of-memory and the offload rungs do not apply on a CPU). Prints progress on stderr and one
JSON object on its last stdout line; a part that raises is reported as ``{"error": ...}`` and
the others still run.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import anyio
from _harness import ROOT, EventLog, build_tiny_model, emit, median, progress, running_runtime
from PIL import Image

from supervisor.core.params import Fit, GenerationParams, JobInputs
from supervisor.jobs import Job, new_job_id
from supervisor.jobs.image_checks import inspect_image
from supervisor.runtime import Runtime

GiB, MiB = 1024**3, 1024**2
# Bytes of float32 weights per unit of tiny-wan's feed-forward width, per transformer block
# (actors/worker/tiny_wan.py): an in and an out projection of inner dim 24, plus the bias.
FFN_BYTES_PER_UNIT_PER_LAYER = (24 * 2 + 1) * 4
WIDE_BF16_BYTES = 1 * GiB
# As a real Wan transformer (30 to 40 blocks): offloading streams blocks, so their count matters.
WIDE_LAYERS = 32
UNPROFILED = "tiny-wan-unprofiled"
WIDE = "wide-wan"
PARTS = ("tiny_wan", "oom_ladder", "decode_only", "two_experts", "expert_offload")

_PROBE = r"""
import json, sys, time
import torch, diffusers
from actors.vram.memory_sources import NvmlSource
device = torch.device(sys.argv[1])
out = {"torch": torch.__version__, "diffusers": diffusers.__version__,
       "cuda_available": torch.cuda.is_available()}
if device.type == "cuda":
    index = device.index or 0
    props = torch.cuda.get_device_properties(index)
    out.update(name=props.name, total_bytes=props.total_memory,
               capability=f"{props.major}.{props.minor}", cuda=torch.version.cuda)
    torch.cuda.init(); torch.zeros(1, device=device)
    source = NvmlSource.open(index)
    source.set_worker(None)
    import pynvml
    out["driver"] = pynvml.nvmlSystemGetDriverVersion()
    def both(label):
        torch.cuda.synchronize(device)
        free, total = torch.cuda.mem_get_info(device)
        r = source.sample()
        procs = {p.pid: p.used for p in r.processes}
        import os
        return {"label": label, "torch_free": free, "torch_total": total, "nvml_free": r.free,
                "nvml_total": r.total, "nvml_used": r.used,
                "free_diff_mib": round((r.free - free) / 2**20, 1),
                "total_diff_mib": round((r.total - total) / 2**20, 1),
                "nvml_this_process": procs.get(os.getpid()),
                "torch_reserved": torch.cuda.memory_reserved(device),
                "nvml_processes": len(r.processes)}
    before = both("before")
    block = torch.empty(4 * 2**30, dtype=torch.uint8, device=device)
    after = both("after 4 GiB")
    out["readings"] = [before, after]
    out["nvml_saw_alloc_mib"] = round((before["nvml_free"] - after["nvml_free"]) / 2**20, 1)
    out["torch_saw_alloc_mib"] = round((before["torch_free"] - after["torch_free"]) / 2**20, 1)
    del block
print(json.dumps(out))
"""


_EXPERT_OFFLOAD = r"""
import json, sys
import torch
from actors.worker.pipeline_host import PipelineHost, experts
from supervisor.core.params import Dtype, PipelineClass, PipelineOptions
path, device = sys.argv[1], torch.device(sys.argv[2])
out = {}
for swap in (False, True):
    host = PipelineHost()
    options = PipelineOptions(device=sys.argv[2], dtype=Dtype.BFLOAT16, two_experts=True,
                              expert_offload=swap)
    host.ensure(__import__("pathlib").Path(path), options, PipelineClass.WAN)
    pipe = host.require()
    seen = []
    def where(_pipe, step, _t, kwargs):
        seen.append([str(next(e.parameters()).device) for e in experts(pipe)])
        return kwargs
    torch.cuda.reset_peak_memory_stats(device)
    pipe(prompt="a lighthouse", height=64, width=64, num_frames=5, num_inference_steps=6,
         guidance_scale=1.0, callback_on_step_end=where, output_type="np")
    out["swap" if swap else "both"] = {"peak_bytes": torch.cuda.max_memory_allocated(device),
                                      "experts_after_each_step": seen}
    del host, pipe
    torch.cuda.empty_cache()
print(json.dumps(out))
"""


def _probe(device: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, device],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if done.returncode:
        return {"error": done.stderr[-1500:]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _build_wide(root: Path) -> Path:
    out = root / WIDE
    ffn = int(2 * WIDE_BF16_BYTES / WIDE_LAYERS / FFN_BYTES_PER_UNIT_PER_LAYER)
    code = (
        "import sys; from pathlib import Path; from actors.worker.tiny_wan import build_tiny_wan; "
        "build_tiny_wan(Path(sys.argv[1]), ffn_dim=int(sys.argv[2]), num_layers=int(sys.argv[3]))"
    )
    args = [str(out), str(ffn), str(WIDE_LAYERS)]
    subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, check=True)
    return out


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*.safetensors"))


def _home(root: Path, name: str, models: dict[str, Path]) -> tuple[Path, Path]:
    """A fresh data folder holding `models` (name -> built folder) and a registry file that
    names every one that is not tiny-wan as a local model (no memory profile: no pre-flight)."""
    home = root / name
    entries = []
    for model, source in models.items():
        shutil.copytree(source, home / "models" / model)
        if model != "tiny-wan":
            entries.append(
                f'[models."{model}"]\ndescription = "device check"\nsource = "local"\n'
                f'local_path = "models/{model}"\npipeline_class = "WanPipeline"\n'
                "defaults = { width = 32, height = 32, num_frames = 5, steps = 2, "
                "guidance_scale = 1.0, fps = 8 }\n"
                "limits = { max_width = 1280, max_height = 1280, max_frames = 81, "
                "max_steps = 1000 }\n"
                f"memory = {{ weights_bytes = {_size(source)}, activation_base_bytes = 67108864, "
                "activation_bytes_per_latent_token = 4096.0 }\n"
            )
    registry = root / f"{name}-models.toml"
    registry.write_text("\n".join(entries))
    return home, registry


def _params(width: int, height: int, frames: int, seed: int = 0) -> GenerationParams:
    return GenerationParams(
        prompt="a lighthouse at dusk, waves",
        width=width,
        height=height,
        num_frames=frames,
        steps=2,
        guidance_scale=1.0,
        seed=seed,
        fps=8,
    )


async def _run(
    runtime: Runtime,
    log: EventLog,
    model: str,
    params: GenerationParams,
    inputs: JobInputs | None = None,
) -> dict[str, Any]:
    job = Job(
        id=new_job_id(), model=model, params=params, options=runtime.base_options(), inputs=inputs
    )
    started = time.perf_counter()
    await runtime.submit(job)
    end = await log.wait_job(job.id, "job.succeeded", "job.failed", limit=420)
    stored = await runtime.store.get(job.id)
    assert stored is not None
    result = stored.result or {}
    # The worker's own time: its stage timings (load excluded: it is not a stage of a job).
    timings = {k: round(float(v), 4) for k, v in (result.get("timings") or {}).items()}
    worker_s = sum(v for k, v in timings.items() if k != "load")
    return {
        "ok": end.event.type.value == "job.succeeded",
        "wall_s": round(end.perf - started, 4),
        "worker_s": round(worker_s, 4),
        "timings": timings,
        "peak_memory_bytes": result.get("peak_memory_bytes"),
        "options_used": result.get("options_used"),
        "params_used": {k: (result.get("params_used") or {}).get(k) for k in ("width", "height")}
        | {"num_frames": (result.get("params_used") or {}).get("num_frames")},
        "retries": [
            {
                "attempt": r.event.data.attempt,  # type: ignore[attr-defined]
                "error_code": r.event.data.error_code,  # type: ignore[attr-defined]
                "reason": r.event.data.reason[:300],  # type: ignore[attr-defined]
            }
            for r in log.of_job(job.id, "job.retrying")
        ],
        "changes": [
            {
                "rung": c.rung,
                "origin": c.origin.value,
                "attempt": c.attempt,
                "decode_only": c.decode_only,
                "fresh_worker": c.fresh_worker,
            }
            for c in stored.changes
        ],
        "sentences": [c.text for c in stored.changes],
        "attempts": len(log.of_job(job.id, "job.started")),
        # Two-expert models: which expert ran each denoising step (1 high noise, 2 low noise).
        "experts": [
            r.event.data.expert  # type: ignore[attr-defined]
            for r in log.of_job(job.id, "job.progress")
            if r.event.data.step  # type: ignore[attr-defined]
        ],
        "error": None if end.event.type.value == "job.succeeded" else end.event.data.error,  # type: ignore[attr-defined]
    }


async def _tiny(root: Path, tiny: Path, device: str, warm: int) -> dict[str, Any]:
    home, registry = _home(root, "tiny", {"tiny-wan": tiny})
    async with running_runtime(home, device=device, models_file=registry) as (runtime, log):
        cold = await _run(runtime, log, "tiny-wan", _params(32, 32, 5))
        runs = [
            await _run(runtime, log, "tiny-wan", _params(32, 32, 5, seed=i)) for i in range(warm)
        ]
        progress(f"tiny-wan 32x32x5: cold {cold['wall_s']} s, warm {[r['wall_s'] for r in runs]}")
        big = await _run(runtime, log, "tiny-wan", _params(832, 480, 33))
        progress(f"tiny-wan 480x832x33: {big['wall_s']} s, peak {big['peak_memory_bytes']}")
        short = await _run(runtime, log, "tiny-wan", _params(832, 480, 5))
        progress(f"tiny-wan 480x832x5: {short['wall_s']} s, peak {short['peak_memory_bytes']}")
    walls = [r["wall_s"] for r in runs]
    worker = [r["worker_s"] for r in runs]
    overhead = [r["wall_s"] - r["worker_s"] for r in runs]
    return {
        "dtype": (cold["options_used"] or {}).get("dtype"),
        "cold_wall_s": cold["wall_s"],
        "warm_wall_median_s": round(median(walls), 4),
        "warm_worker_median_s": round(median(worker), 4),
        "overhead_median_s": round(median(overhead), 4),
        "overhead_ratio": round(median(walls) / median(worker), 3) if median(worker) else None,
        "all_ok": cold["ok"] and all(r["ok"] for r in runs),
        "big_480x832x33": big,
        "short_480x832x5": short,
    }


async def _ladder(root: Path, wide: Path, device: str, cap: str) -> dict[str, Any]:
    home, registry = _home(root, "ladder", {WIDE: wide})
    overrides: dict[str, Any] = {"device": device, "models_file": registry}
    if cap:
        overrides["device_memory_limit"] = cap
    async with running_runtime(home, **overrides) as (runtime, log):
        # One latent token: the feed-forward activations (tokens x ~5.5M x 2 bytes) stay small,
        # so the weights are what does not fit.
        run = await _run(runtime, log, WIDE, _params(16, 16, 1))
        restarts = [r.event.data for r in log.received if r.event.type.value == "actor.restarted"]
    progress(f"oom ladder: ok={run['ok']} changes={[c['rung'] for c in run['changes']]}")
    return {"cap": cap, "worker_restarts": len(restarts), **run}


async def _decode_only(root: Path, tiny: Path, device: str, cap: str) -> dict[str, Any]:
    home, registry = _home(root, "decode", {UNPROFILED: tiny})
    overrides: dict[str, Any] = {"device": device, "models_file": registry}
    if cap:
        overrides["device_memory_limit"] = cap
    async with running_runtime(home, **overrides) as (runtime, log):
        await _run(runtime, log, UNPROFILED, _params(32, 32, 5))  # the pipeline loaded first
        run = await _run(runtime, log, UNPROFILED, _params(832, 480, 5, seed=1))
        denoise_steps = [
            r
            for r in log.received
            if r.event.type.value == "job.progress"
            and r.event.data.stage.value == "denoise"  # type: ignore[attr-defined]
            and r.event.data.step  # type: ignore[attr-defined]
        ]
    progress(f"decode-only: ok={run['ok']} changes={run['changes']}")
    return {"cap": cap, "denoise_step_events": len(denoise_steps), **run}


async def _two_experts(root: Path, device: str) -> dict[str, Any]:
    """Wan 2.2 A14B's shape on the device: the tiny two-expert text model, then the image one
    from a first frame and from a first and a last frame (both registered by default)."""
    home = root / "experts"
    for variant, name in (("a14b", "tiny-wan-a14b"), ("a14b-i2v", "tiny-wan-a14b-i2v")):
        cmd = [sys.executable, "-m", "actors.worker.tiny_rebuild", str(home / "models" / name)]
        await anyio.run_process([*cmd, variant], cwd=ROOT)
    out: dict[str, Any] = {}
    async with running_runtime(home, device=device) as (runtime, log):
        frames = []
        for colour in ((230, 120, 40), (20, 40, 160)):
            buffer = io.BytesIO()
            Image.new("RGB", (64, 32), colour).save(buffer, format="PNG")
            data = buffer.getvalue()
            frames.append(runtime.inputs.put(data, inspect_image(data, max_pixels=10**6)).id)
        small = _params(64, 32, 5)
        out["t2v"] = await _run(runtime, log, "tiny-wan-a14b", small)
        out["i2v"] = await _run(
            runtime, log, "tiny-wan-a14b-i2v", small, JobInputs(image=frames[0])
        )
        out["flf2v"] = await _run(
            runtime,
            log,
            "tiny-wan-a14b-i2v",
            small,
            JobInputs(image=frames[0], last_image=frames[1], fit=Fit.PAD),
        )
    summary = {k: (v["ok"], v["experts"], v["wall_s"]) for k, v in out.items()}
    progress(f"two experts: {summary}")
    return {"dtype": (out["t2v"]["options_used"] or {}).get("dtype"), **out}


async def _expert_offload(root: Path, device: str) -> dict[str, Any]:
    """The expert-offload rung's mechanism on the device: tiny-wan-a14b loaded with both
    experts resident, then with only the active one (the other parked in host memory), the
    device of each expert after every step and the peak of each run."""
    if not device.startswith("cuda"):
        return {"skipped": "a GPU rung: on a CPU both experts share host memory"}
    model = root / "experts-offload" / "tiny-wan-a14b"
    cmd = [sys.executable, "-m", "actors.worker.tiny_rebuild", str(model), "a14b"]
    await anyio.run_process(cmd, cwd=ROOT)
    done = await anyio.run_process(
        [sys.executable, "-c", _EXPERT_OFFLOAD, str(model), device], cwd=ROOT, check=False
    )
    if done.returncode:
        return {"error": done.stderr.decode(errors="replace")[-1500:]}
    result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    progress(f"expert offload: {json.dumps(result)[:400]}")
    return result


async def _part(figures: dict[str, Any], name: str, coro: Any) -> None:
    started = time.perf_counter()
    progress(f"== {name}")
    try:
        figures[name] = await coro
    except Exception as exc:  # noqa: BLE001 - one part's failure is a figure, not the end
        figures[name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        progress(f"{name} failed: {exc!r}"[:2000])
        traceback.print_exc()
    figures[name]["seconds"] = round(time.perf_counter() - started, 1)


async def main(device: str, warm: int, ladder_cap: str | None, parts: set[str]) -> dict[str, Any]:
    figures: dict[str, Any] = {"device_asked": device}
    started = time.perf_counter()
    figures["env"] = _probe(device)
    progress(f"env: {json.dumps(figures['env'])[:600]}")
    with tempfile.TemporaryDirectory(prefix="genvisor-device-check-") as tmp:
        root = Path(tmp)
        tiny = build_tiny_model(root / "built")
        if "tiny_wan" in parts:
            await _part(figures, "tiny_wan", _tiny(root, tiny, device, warm))
        if "oom_ladder" in parts:
            wide = _build_wide(root / "built")
            weights = _size(wide / "transformer")
            figures["wide_transformer_file_bytes"] = weights
            # Well below the transformer in fp8 (a quarter of its float32 file): neither fp8
            # nor a whole-model offload fits, while blocks streamed in turn leave room.
            cap = ladder_cap if ladder_cap is not None else f"{int(weights / 4 * 0.6 / MiB)}MiB"
            await _part(figures, "oom_ladder", _ladder(root, wide, device, cap))
        # 5 frames: the decoded video (which tiling does not shrink) stays small beside the
        # VAE's working memory at full size (which tiling does).
        short = (figures.get("tiny_wan", {}).get("short_480x832x5") or {}).get("peak_memory_bytes")
        decode_cap = f"{int(short * 0.55 / MiB)}MiB" if short and device != "cpu" else ""
        if "decode_only" in parts:
            await _part(figures, "decode_only", _decode_only(root, tiny, device, decode_cap))
        if "two_experts" in parts:
            await _part(figures, "two_experts", _two_experts(root, device))
        if "expert_offload" in parts:
            await _part(figures, "expert_offload", _expert_offload(root, device))
    figures["total_s"] = round(time.perf_counter() - started, 1)
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--warm", type=int, default=8, help="warm tiny-wan jobs")
    parser.add_argument("--ladder-cap", default=None, help='e.g. "400MiB"; "" = no cap')
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset")
    args = parser.parse_args()
    emit(anyio.run(main, args.device, args.warm, args.ladder_cap, set(args.parts.split(","))))
