"""Holds the worker's loaded Wan pipeline and applies `PipelineOptions` to it.

The class comes from the registry (`PipelineClass`: `WanPipeline` or `WanImageToVideoPipeline`,
nothing else is ever instantiated). Two-expert models (Wan 2.2 A14B: `transformer` and
`transformer_2`) get every weight option on both experts. An image job on a model loaded as a
text pipeline (Wan 2.2 TI2V-5B serves both) runs on its image form, built from the same loaded
components (`from_pipe`: no second copy of the weights).

Options fall in two groups. Cheap ones (VAE tiling and slicing) are toggled on the loaded
pipeline between jobs. Structural ones (dtype, device, fp8 layerwise casting, offload) change
how weights are stored or placed; hooks installed by casting and offload cannot be removed
reliably, so a change there reloads from disk. Either way `load_s` and `reloaded` tell the
control side which one happened.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import WanImageToVideoPipeline, WanPipeline

from actors.worker.protocol import Dtype, Offload, PipelineClass, PipelineOptions
from supervisor.core.exceptions import UnsupportedOption

__all__ = ["LoadResult", "PipelineHost", "experts", "keep_active_expert_only", "torch_dtype"]

_DTYPES = {
    Dtype.FLOAT32: torch.float32,
    Dtype.BFLOAT16: torch.bfloat16,
    Dtype.FLOAT16: torch.float16,
}


def torch_dtype(dtype: Dtype) -> torch.dtype:
    return _DTYPES[dtype]


_CLASSES: dict[PipelineClass, Any] = {
    PipelineClass.WAN: WanPipeline,
    PipelineClass.WAN_I2V: WanImageToVideoPipeline,
}


def experts(pipe: Any) -> list[Any]:
    """The denoisers of a pipeline: one, or two for Wan 2.2 A14B (high then low noise)."""
    return [t for t in (pipe.transformer, getattr(pipe, "transformer_2", None)) if t is not None]


def keep_active_expert_only(pipe: Any, device: torch.device, park: str = "cpu") -> None:
    """Every component on `device` except the second expert, which waits in host memory; each
    expert moves itself onto the device as it is called and sends the other one back first, so
    at most one expert is ever on the device (what ComfyUI and Wan2GP do for Wan 2.2 A14B).

    Invariant: a high-noise step never runs after the first low-noise one (diffusers'
    boundary), so a job swaps once; the next job starts with the low-noise expert on the
    device and swaps back at its first step."""
    first, second = experts(pipe)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module) and component is not second:
            component.to(device)
    second.to(park)

    def onload(active: Any, idle: Any) -> Any:
        def hook(module: Any, args: Any, kwargs: Any) -> None:
            if next(idle.parameters()).device.type != park:
                idle.to(park)
            if next(active.parameters()).device != device:
                active.to(device)

        return hook

    first.register_forward_pre_hook(onload(first, second), with_kwargs=True)
    second.register_forward_pre_hook(onload(second, first), with_kwargs=True)


def _structural(options: PipelineOptions) -> tuple[object, ...]:
    return (
        options.dtype,
        options.device,
        options.layerwise_fp8,
        options.offload,
        options.expert_offload,
    )


@dataclass(frozen=True, slots=True)
class LoadResult:
    options: PipelineOptions
    load_s: float
    reloaded: bool


def check_supported(options: PipelineOptions) -> None:
    """Raise `UnsupportedOption` for what this machine cannot do, before touching weights."""
    if options.device.startswith("cuda") and not torch.cuda.is_available():
        raise UnsupportedOption(
            option="device", value=options.device, device="this machine", reason="no CUDA device"
        )
    if options.expert_offload and not options.device.startswith("cuda"):
        raise UnsupportedOption(
            option="expert_offload",
            value="true",
            device=options.device,
            reason="on the CPU both experts already live in host memory",
        )
    if options.offload is not Offload.NONE and not options.device.startswith("cuda"):
        raise UnsupportedOption(
            option="offload",
            value=options.offload.value,
            device=options.device,
            reason=(
                "offloading moves weights between an accelerator and host memory; "
                "on the CPU the weights already live in host memory (use offload='none')"
            ),
        )


class PipelineHost:
    def __init__(self) -> None:
        # diffusers is only partly typed: the pipeline is handled as Any.
        self.pipe: Any = None
        self.model_path: Path | None = None
        self.options: PipelineOptions | None = None
        self.pipeline_class = PipelineClass.WAN
        self._image_form: Any = None

    @property
    def execution_device(self) -> torch.device:
        assert self.pipe is not None
        device: torch.device = self.pipe._execution_device
        return device

    def require(self) -> Any:
        if self.pipe is None:
            raise RuntimeError("no pipeline loaded: send Load before Generate")
        return self.pipe

    def image_pipeline(self) -> Any:
        """The loaded pipeline in its image-to-video form (itself when it is one)."""
        pipe = self.require()
        if isinstance(pipe, WanImageToVideoPipeline):
            return pipe
        if self._image_form is None:
            self._image_form = WanImageToVideoPipeline.from_pipe(pipe)
            self._image_form.set_progress_bar_config(disable=True)
        return self._image_form

    def ensure(
        self,
        model_path: Path,
        options: PipelineOptions,
        pipeline_class: PipelineClass | None = None,
    ) -> LoadResult:
        """Make the loaded pipeline match `model_path` and `options`, reloading only if needed.
        `pipeline_class` None: the one loaded (a Generate names no class)."""
        check_supported(options)
        started = time.perf_counter()
        wanted = pipeline_class or self.pipeline_class
        needs_reload = (
            self.pipe is None
            or self.options is None
            or self.model_path != model_path
            or wanted is not self.pipeline_class
            or _structural(self.options) != _structural(options)
        )
        if needs_reload:
            self._unload()
            self.pipe = self._load(model_path, options, wanted)
            self.model_path = model_path
            self.pipeline_class = wanted
        self._apply_cheap(options)
        self.options = options
        return LoadResult(
            options=options, load_s=time.perf_counter() - started, reloaded=needs_reload
        )

    def _unload(self) -> None:
        # Invariant: model_path names the loaded pipeline or nothing; a failed load must not
        # leave the previous model's path for the next ensure() to load instead.
        self.pipe = None
        self._image_form = None
        self.model_path = None
        self.options = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _load(self, model_path: Path, options: PipelineOptions, cls: PipelineClass) -> Any:
        dtype = torch_dtype(options.dtype)
        # Wan's VAE is meant to run in float32 (its docs: better decode quality); the
        # transformer and text encoder take the requested dtype.
        pipe: Any = _CLASSES[cls].from_pretrained(
            str(model_path), dtype=dtype, use_safetensors=True
        )
        pipe.vae.to(torch.float32)
        pipe.set_progress_bar_config(disable=True)
        if options.layerwise_fp8:
            for expert in experts(pipe):
                expert.enable_layerwise_casting(
                    storage_dtype=torch.float8_e4m3fn, compute_dtype=dtype
                )
        if options.offload is Offload.NONE and options.expert_offload and len(experts(pipe)) == 2:
            device = torch.device(options.device)
            if device.index is None:
                # Parameters report "cuda:0", never "cuda": the hooks compare with the index.
                device = torch.device("cuda", torch.cuda.current_device())
            keep_active_expert_only(pipe, device)
        elif options.offload is Offload.NONE:
            pipe.to(options.device)
        elif options.offload is Offload.MODEL:
            pipe.enable_model_cpu_offload(device=options.device)
        elif options.offload is Offload.SEQUENTIAL:
            pipe.enable_sequential_cpu_offload(device=options.device)
        else:
            pipe.enable_group_offload(
                onload_device=torch.device(options.device),
                offload_device=torch.device("cpu"),
                offload_type="leaf_level",
                use_stream=True,
            )
        return pipe

    def _apply_cheap(self, options: PipelineOptions) -> None:
        pipe = self.require()
        if options.vae_tiling:
            pipe.vae.enable_tiling()
        else:
            pipe.vae.disable_tiling()
        if options.vae_slicing:
            pipe.vae.enable_slicing()
        else:
            pipe.vae.disable_slicing()
