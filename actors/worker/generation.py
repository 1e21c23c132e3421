"""Runs one job on the loaded pipeline, stage by stage: encode → denoise → decode → save.

The denoiser runs with `output_type="latent"` and the VAE decodes as a separate step, so each
stage is timed and blamed exactly, and the latents survive a decode failure: they are written
next to the outputs and named in `Failed.latents_path`, and a `Generate` with
`decode_only_from` re-runs the decode alone (e.g. with VAE tiling after an out-of-memory).

Cancellation is cooperative: the cancel event is checked at every denoising step (setting the
pipeline's interrupt flag, so it stops at the next step) and between stages.
"""

from __future__ import annotations

import gc
import resource
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import numpy.typing as npt
import torch
from pydantic import BaseModel
from safetensors.torch import load_file, save_file

from actors.worker.image_fit import fit_image, open_input
from actors.worker.pipeline_host import PipelineHost
from actors.worker.protocol import (
    Cancelled,
    Done,
    Failed,
    Generate,
    Progress,
    StageTiming,
)
from actors.worker.video_output import OutputPaths, output_paths, remove_partials, write_outputs
from supervisor.core.exceptions import JobCancelledError
from supervisor.core.stages import Stage
from supervisor.errors.report import ErrorReport

__all__ = ["JobRun", "run_generation"]

Emit = Callable[[BaseModel], None]
_LATENTS_KEY = "latents"


@dataclass
class JobRun:
    """One job in flight. `cancel` is set by the channel reader thread."""

    request: Generate
    host: PipelineHost
    emit: Emit
    model_name: str
    # For frames nobody waits on (stage timings); None: `emit`. The worker's channel sends
    # them with its next frame (`BlockingChannel.send_with_next`): one wake-up of the control
    # process instead of two, while the job computes beside it.
    emit_with_next: Emit | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    last_progress_ts: float | None = None
    started: float = field(default_factory=time.perf_counter)
    timings: dict[Stage, float] = field(default_factory=dict)

    @property
    def job_id(self) -> str:
        return self.request.job_id

    def progress(
        self,
        stage: Stage,
        step: int | None = None,
        total: int | None = None,
        *,
        expert: int | None = None,
    ) -> None:
        self.last_progress_ts = time.time()
        elapsed = time.perf_counter() - self.started
        self.emit(
            Progress(
                job_id=self.job_id,
                stage=stage,
                step=step,
                total=total,
                elapsed_s=elapsed,
                expert=expert,
            )
        )

    def check_cancel(self, stage: Stage) -> None:
        if self.cancel.is_set():
            raise JobCancelledError(job_id=self.job_id, stage=stage.value)

    def timed(self, stage: Stage, started: float) -> None:
        seconds = time.perf_counter() - started
        self.timings[stage] = seconds
        emit = self.emit_with_next or self.emit
        emit(StageTiming(job_id=self.job_id, stage=stage, seconds=seconds))


def _encode(run: JobRun) -> tuple[torch.Tensor, torch.Tensor | None]:
    pipe = run.host.require()
    params = run.request.params
    with torch.inference_mode():
        positive, negative = pipe.encode_prompt(
            prompt=params.prompt,
            negative_prompt=params.negative_prompt,
            do_classifier_free_guidance=params.guidance_scale > 1.0,
            num_videos_per_prompt=1,
            device=run.host.execution_device,
        )
    return positive, negative


def _image_inputs(run: JobRun) -> dict[str, Any]:
    """The job's first (and last) frame, fitted to its current size: {} for a text job."""
    request = run.request
    params = request.params
    inputs: dict[str, Any] = {}
    for key, stored in (("image", request.image_path), ("last_image", request.last_image_path)):
        if stored is not None:
            image = open_input(Path(stored))
            inputs[key] = fit_image(image, params.width, params.height, request.fit)
    return inputs


def _failed_stage(stage: Stage, exc: BaseException) -> Stage:
    """The stage to blame. The image pipeline VAE-encodes the first (and last) frame inside its
    call, before the first denoising step (`prepare_latents`): a failure there is that encode's
    (VAE tiling lowers it), not the denoiser's."""
    if stage is Stage.DENOISE:
        frames = traceback.extract_tb(exc.__traceback__)
        if any(f.name == "prepare_latents" and "pipeline_wan_i2v" in f.filename for f in frames):
            return Stage.IMAGE_ENCODE
    return stage


def _expert_of(pipeline: Any, timestep: Any) -> int | None:
    """Which expert of a two-expert pipeline ran at `timestep` (as the pipeline chooses:
    `transformer` while t >= boundary_ratio x num_train_timesteps, then `transformer_2`)."""
    ratio = getattr(pipeline.config, "boundary_ratio", None)
    if getattr(pipeline, "transformer_2", None) is None or ratio is None:
        return None
    boundary = ratio * pipeline.scheduler.config.num_train_timesteps
    return 1 if float(timestep) >= boundary else 2


def _denoise(run: JobRun, positive: torch.Tensor, negative: torch.Tensor | None) -> torch.Tensor:
    images = _image_inputs(run)
    pipe = run.host.image_pipeline() if images else run.host.require()
    params = run.request.params

    def on_step_end(
        pipeline: Any, step: int, timestep: Any, kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        run.progress(Stage.DENOISE, step + 1, params.steps, expert=_expert_of(pipeline, timestep))
        if run.cancel.is_set():
            # WanPipeline skips every remaining step once its interrupt flag is up.
            pipeline._interrupt = True
        return kwargs

    # A CPU generator makes the initial noise identical on every device for one seed.
    generator = torch.Generator(device="cpu").manual_seed(params.seed)
    output = pipe(
        prompt_embeds=positive,
        negative_prompt_embeds=negative,
        height=params.height,
        width=params.width,
        num_frames=params.num_frames,
        num_inference_steps=params.steps,
        guidance_scale=params.guidance_scale,
        generator=generator,
        output_type="latent",
        callback_on_step_end=on_step_end,
        callback_on_step_end_tensor_inputs=["latents"],
        **images,
    )
    latents: torch.Tensor = output.frames
    return latents


def _decode(run: JobRun, latents: torch.Tensor) -> npt.NDArray[np.uint8]:
    pipe = run.host.require()
    vae = pipe.vae
    z_dim = vae.config.z_dim
    with torch.inference_mode():
        z = latents.to(run.host.execution_device, dtype=vae.dtype)
        mean = torch.tensor(vae.config.latents_mean).view(1, z_dim, 1, 1, 1).to(z)
        std = torch.tensor(vae.config.latents_std).view(1, z_dim, 1, 1, 1).to(z)
        video = vae.decode(z * std + mean, return_dict=False)[0]
        frames = pipe.video_processor.postprocess_video(video, output_type="np")
    scaled = np.clip(np.rint(np.asarray(frames[0]) * 255.0), 0, 255)
    return scaled.astype(np.uint8)


def _save_latents(path: Path, latents: torch.Tensor, run: JobRun) -> None:
    tmp = path.with_name(f".{path.name}.part")
    try:
        save_file(
            {_LATENTS_KEY: latents.detach().to("cpu", torch.float32).contiguous()},
            str(tmp),
            metadata={"job_id": run.job_id, "params": run.request.params.model_dump_json()},
        )
        tmp.replace(path)
    except BaseException:
        # A failed save (a full disk) leaves no partial file behind. The descriptor is
        # safetensors' own: its Rust writer closes it on the error path (no fd kept on ENOSPC).
        tmp.unlink(missing_ok=True)
        raise


def _resident_now(device: str) -> int | None:
    """Memory in use at the start of a job, after resetting the peak counters so that the
    peak read at its end is this job's (CPU: /proc/self/clear_refs, Linux >= 4.0)."""
    if device.startswith("cuda"):
        return int(torch.cuda.memory_allocated(torch.device(device)))
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _proc_status_bytes("VmRSS")
    except OSError:
        return None


def _proc_status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"{key} not in /proc/self/status")


def _peak_growth(device: str, start: int | None) -> int | None:
    if start is None:
        return None
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated(torch.device(device))) - start
    try:
        return _proc_status_bytes("VmHWM") - start
    except OSError:
        return None


def _peak_memory_bytes(device: str) -> int:
    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated(torch.device(device)))
    # ru_maxrss is in KiB on Linux and covers the process lifetime.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _sidecar(run: JobRun, paths: OutputPaths, frame_count: int) -> dict[str, Any]:
    request = run.request
    return {
        "job_id": run.job_id,
        "model": run.model_name,
        "prompt": request.params.prompt,
        "negative_prompt": request.params.negative_prompt,
        "seed": request.params.seed,
        "params_used": request.params.model_dump(mode="json"),
        "options_used": request.options.model_dump(mode="json"),
        "applied_changes": list(request.applied_changes),
        # Stored inputs are named by their content: the file's stem is the input id's hex.
        "inputs": {
            key: f"sha256:{Path(stored).stem}"
            for key, stored in (
                ("image", request.image_path),
                ("last_image", request.last_image_path),
            )
            if stored is not None
        },
        "fit": request.fit.value if request.image_path is not None else None,
        "decode_only_from": request.decode_only_from,
        "frames_written": frame_count,
        "video": paths.video.name,
        "timings_s": {stage.value: round(s, 6) for stage, s in run.timings.items()},
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
        "created_at": time.time(),
    }


def run_generation(run: JobRun) -> Done | Failed | Cancelled:
    """Run the job; every outcome is a message, never an exception."""
    request = run.request
    paths = output_paths(Path(request.output_dir), run.job_id)
    paths.video.parent.mkdir(parents=True, exist_ok=True)
    device = request.options.device
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(torch.device(device))
    resident_at_start = _resident_now(device)
    stage = Stage.ENCODE
    latents: torch.Tensor | None = None
    failure: ErrorReport | None = None
    try:
        if request.decode_only_from is not None:
            latents = load_file(request.decode_only_from)[_LATENTS_KEY]
        else:
            run.progress(stage)
            started = time.perf_counter()
            positive, negative = _encode(run)
            run.timed(stage, started)
            run.check_cancel(stage)
            stage = Stage.DENOISE
            started = time.perf_counter()
            latents = _denoise(run, positive, negative)
            del positive, negative
            run.timed(stage, started)
            run.check_cancel(stage)
        stage = Stage.DECODE
        run.progress(stage)
        started = time.perf_counter()
        frames = _decode(run, latents)
        run.timed(stage, started)
        run.check_cancel(stage)
        stage = Stage.SAVE
        run.progress(stage)
        started = time.perf_counter()
        write_outputs(paths, frames, request.params.fps, _sidecar(run, paths, len(frames)))
        run.timed(stage, started)
    except JobCancelledError:
        remove_partials(paths)
        return Cancelled(job_id=run.job_id, stage=stage)
    except Exception as exc:  # every failure becomes a report for the control side
        remove_partials(paths)
        failure = ErrorReport.from_exception(
            exc,
            stage=_failed_stage(stage, exc),
            device=device,
            job_id=run.job_id,
            context={"model": run.model_name},
        )
    if failure is not None:
        # Outside the except block the traceback (and the buffers its frames hold) is gone;
        # collect now so the next job starts from a clean heap. Not on success: a full
        # collection costs ~0.2 s with torch loaded, as much as a whole tiny job.
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        kept = _keep_latents(run, stage, latents, paths)
        return Failed(job_id=run.job_id, report=failure, latents_path=kept)
    return Done(
        job_id=run.job_id,
        output_path=str(paths.video),
        sidecar_path=str(paths.sidecar),
        timings=dict(run.timings),
        peak_memory_bytes=_peak_memory_bytes(device),
        peak_growth_bytes=_peak_growth(device, resident_at_start),
        params_used=request.params,
        options_used=request.options,
    )


def _keep_latents(
    run: JobRun, stage: Stage, latents: torch.Tensor | None, paths: OutputPaths
) -> str | None:
    if stage is not Stage.DECODE or latents is None:
        return None
    if run.request.decode_only_from is not None:
        return run.request.decode_only_from
    try:
        _save_latents(paths.latents, latents, run)
    except Exception:
        # The decode failure is the one to report; without latents only a full re-run helps.
        return None
    return str(paths.latents)
