"""Pre-flight: estimate a job's peak memory, and pick the first ladder rung predicted to fit.

peak = max over stages of (weights resident in that stage + that stage's activations + runtime
overhead). Activation terms, per model (config/memory_profiles.toml):

- denoiser: ``denoise_bytes_per_position x latent positions x dtype bytes`` where latent
  positions = ((frames-1)//4+1) x (height/8) x (width/8). Seeded from ComfyUI's
  ``BaseModel.memory_required`` (area x dtype_size x 0.01 x memory_usage_factor MiB, with
  Wan 2.1's ``memory_usage_factor = dim / 2222``, comfy/supported_models.py): for dim d that is
  0.01 x 2^20 x d / 2222 bytes per latent position per dtype byte.
- VAE decode: ``decode_bytes_per_pixel x (height x width) x dtype bytes``, independent of the
  frame count because Wan's causal VAE decodes one latent frame at a time with a feature cache.
  Seeded from ComfyUI's Wan 2.1 VAE estimate (comfy/sd.py, VAE.__init__):
  ``memory_used_decode = 7000 x latent_h x latent_w x (8 x 8) x dtype_size``, i.e. 7000 bytes
  per output pixel per dtype byte for the full VAE (base dim 96). VAE tiling caps the pixels
  to one tile (diffusers' Wan VAE: 256 x 256 samples per tile).
- the decoded video itself: 3 x frames x height x width float32 values, `output_copies` times.
- loading, on a CPU only: every component at the dtype in use plus the largest component's
  checkpoint as stored (diffusers reads a safetensors file whole into a state dict, then fills
  the model from it). Measured here: a 490 MB float32 transformer added 1.1 GB of address space
  while loading, in float32 and in bfloat16 alike; this term says 0.98 GB. On CUDA the weights
  are read in host memory and the device holds what the other stages count.

`peak` is the run's peak (denoise or decode), the figure calibration fits; `needed` also counts
the load, which happens only when the worker (re)loads the pipeline.

`choose_rung` walks the ladder cumulatively from the job's starting point (a learned rung, or
the top) and returns the first plan predicted to fit ``free - reserve``, or a `Refusal` that
carries the numbers.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from supervisor.core.exceptions import ConfigError
from supervisor.core.params import Dtype, GenerationParams, Offload, PipelineOptions
from supervisor.core.settings import config_path
from supervisor.errors.report import Stage
from supervisor.recovery.ladder import (
    AppliedChange,
    DeviceKind,
    Rung,
    RungId,
    applies,
    apply_rung,
    apply_up_to,
    device_kind,
    next_rung,
)
from supervisor.recovery.weights_header import ModelWeights

__all__ = [
    "Estimate",
    "MemoryProfile",
    "Plan",
    "PreflightJob",
    "Refusal",
    "choose_rung",
    "estimate_peak",
    "format_bytes",
    "load_memory_profiles",
    "load_peak",
    "with_scales",
]

DEFAULT_PROFILES_PATH = config_path("memory_profiles.toml")
DTYPE_BYTES = {Dtype.FLOAT32: 4, Dtype.BFLOAT16: 2, Dtype.FLOAT16: 2}
GiB = 1024**3


def format_bytes(n: float) -> str:
    for unit, size in (("GiB", GiB), ("MiB", 1024**2), ("KiB", 1024)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


class MemoryProfile(BaseModel):
    """Activation coefficients of one model (bytes per unit per dtype byte)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    denoise_bytes_per_position: float = Field(gt=0)
    decode_bytes_per_pixel: float = Field(gt=0)
    # Image jobs: the VAE encode of the conditioning video (the first frame, zeros, and the
    # last frame for first-last-frame), bytes per input pixel per dtype byte; None: 6/7 of
    # decode (ComfyUI's Wan VAE: 6000 to encode, 7000 to decode, comfy/sd.py).
    encode_bytes_per_pixel: float | None = Field(default=None, gt=0)
    # Wan 2.2 TI2V-5B (expand_timesteps) encodes the first frame alone, not a whole video:
    # ComfyUI counts 1500 instead of 6000 for four frames or fewer.
    encode_first_frame_only: bool = False
    decode_tile: int = Field(default=256, ge=16)
    output_copies: float = Field(default=2.0, ge=0)
    overhead_bytes: int = Field(default=0, ge=0)
    # Share of a component's weights on the device under group offload.
    group_resident_fraction: float = Field(default=0.15, gt=0, le=1)
    # Calibration multipliers (supervisor/recovery/calibration.py); 1.0 = the seeded figures.
    denoise_scale: float = Field(default=1.0, gt=0)
    decode_scale: float = Field(default=1.0, gt=0)


def load_memory_profiles(path: Path = DEFAULT_PROFILES_PATH) -> dict[str, MemoryProfile]:
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
        return {name: MemoryProfile.model_validate(v) for name, v in raw["models"].items()}
    except (OSError, tomllib.TOMLDecodeError, KeyError) as exc:
        raise ConfigError(key="memory profiles", value=str(path), allowed=str(exc)) from exc
    except ValidationError as exc:
        raise ConfigError(
            key="memory profiles", value=str(path), allowed=str(exc.errors()[0]["msg"])
        ) from exc


@dataclass(frozen=True, slots=True)
class Estimate:
    """Predicted peak bytes and where they come from (the peak stage's terms)."""

    peak: int
    peak_stage: Stage
    weights: int
    activation: int
    output: int
    overhead: int
    by_stage: dict[Stage, int]
    # Unscaled activation terms, the features calibration fits against measured peaks.
    denoise_feature: int
    decode_feature: int
    # Loading the pipeline (CPU only, 0 elsewhere): weights plus one checkpoint read whole.
    load: int = 0

    @property
    def needed(self) -> int:
        return max(self.peak, self.load)

    @property
    def needed_stage(self) -> Stage:
        return Stage.LOAD if self.load > self.peak else self.peak_stage

    def as_dict(self) -> dict[str, JsonValue]:
        return {
            "peak_bytes": self.peak,
            "peak_stage": self.peak_stage.value,
            "weights_bytes": self.weights,
            "activation_bytes": self.activation,
            "output_bytes": self.output,
            "overhead_bytes": self.overhead,
            "by_stage": {s.value: b for s, b in self.by_stage.items()},
            "load_bytes": self.load,
        }


def _resident(
    weights: ModelWeights, names: Sequence[str], opts: PipelineOptions, profile: MemoryProfile
) -> int:
    size = DTYPE_BYTES[opts.dtype]
    total = 0
    for name in names:
        comp = weights.get(name)
        if comp is None:
            continue
        full = comp.bytes_in(size, fp8_matrices=opts.layerwise_fp8 and name == "transformer")
        if opts.offload is Offload.GROUP:
            full = math.ceil(full * profile.group_resident_fraction)
        elif opts.offload is Offload.SEQUENTIAL:
            full = math.ceil(comp.largest_tensor_params * size)
        total += full
    return total


def load_peak(weights: ModelWeights, options: PipelineOptions) -> int:
    """Bytes a CPU load adds: every component at the dtype in use, plus the largest component's
    checkpoint as stored (read whole before the model is filled from it). Layerwise fp8 does not
    lower it: casting happens after the read. For a float32 checkpoint loaded in bfloat16 this
    counts the model at 2 bytes a parameter, yet the measured peak was as high as in float32
    (1.1 GB for 490 MB of weights): it under-counts such loads by about a quarter."""
    size = DTYPE_BYTES[options.dtype]
    resident = sum(c.bytes_in(size) for c in weights.components.values())
    largest = max((c.stored_bytes for c in weights.components.values()), default=0)
    return resident + largest


_EXPERTS = ("transformer", "transformer_2")
# Latent channels of Wan's VAE (2.1): the image condition adds a mask (4) and the encoded
# conditioning video (16) to each latent position during denoise.
_CONDITION_CHANNELS = 20


def _denoise_weights(
    weights: ModelWeights, options: PipelineOptions, profile: MemoryProfile
) -> int:
    """Weights on the device while the denoiser runs: everything without offload (both
    experts of a two-expert model), all but the smaller expert when only the active one is
    kept, and the larger expert alone under an offload that moves each model by itself."""
    experts = [_resident(weights, [name], options, profile) for name in _EXPERTS]
    if options.offload is not Offload.NONE:
        return max(experts)
    everything = _resident(weights, list(weights.components), options, profile)
    if options.expert_offload and all(experts):
        return everything - min(experts)
    return everything


def _image_encode(
    profile: MemoryProfile, options: PipelineOptions, params: GenerationParams
) -> tuple[int, int]:
    """(activation bytes, input video bytes) of the VAE encode of an image job's condition."""
    size = DTYPE_BYTES[options.dtype]
    h, w, tile = params.height, params.width, profile.decode_tile
    pixels = min(h, tile) * min(w, tile) if options.vae_tiling else h * w
    per_pixel = profile.encode_bytes_per_pixel or profile.decode_bytes_per_pixel * 6 / 7
    frames = 1 if profile.encode_first_frame_only else params.num_frames
    if profile.encode_first_frame_only:
        per_pixel /= 4
    # The VAE runs in float32 (pipeline_host); the conditioning video is built at that dtype.
    video = 3 * frames * h * w * 4
    return math.ceil(per_pixel * pixels * size), video


def estimate_peak(
    profile: MemoryProfile,
    weights: ModelWeights,
    options: PipelineOptions,
    params: GenerationParams,
    *,
    overhead: int | None = None,
    image: bool = False,
) -> Estimate:
    """`image`: the job starts from an image (its condition is encoded, then held in denoise)."""
    size = DTYPE_BYTES[options.dtype]
    overhead = profile.overhead_bytes if overhead is None else overhead
    positions = ((params.num_frames - 1) // 4 + 1) * (params.height // 8) * (params.width // 8)
    denoise_feature = math.ceil(profile.denoise_bytes_per_position * positions * size)
    tile = profile.decode_tile
    h, w = params.height, params.width
    pixels = min(h, tile) * min(w, tile) if options.vae_tiling else h * w
    decode_feature = math.ceil(profile.decode_bytes_per_pixel * pixels * size)
    output = math.ceil(3 * params.num_frames * h * w * 4 * profile.output_copies)
    denoise_w = _denoise_weights(weights, options, profile)
    # Under model offload only the component in use is on the device; otherwise all but an
    # expert waiting in host memory.
    if options.offload is Offload.NONE:
        decode_w = encode_w = denoise_w
    else:
        decode_w = _resident(weights, ["vae"], options, profile)
        encode_w = _resident(weights, ["vae", "image_encoder"], options, profile)
    condition = _CONDITION_CHANNELS * positions * 4 if image else 0
    denoise_act = math.ceil(denoise_feature * profile.denoise_scale) + condition
    decode_act = math.ceil((decode_feature + output) * profile.decode_scale) - output
    by_stage = {
        Stage.DENOISE: denoise_w + denoise_act + overhead,
        Stage.DECODE: decode_w + decode_act + output + overhead,
    }
    encode_act = video = 0
    if image:
        encode_act, video = _image_encode(profile, options, params)
        by_stage[Stage.IMAGE_ENCODE] = encode_w + encode_act + video + overhead
    stage = max(by_stage, key=lambda s: by_stage[s])
    if stage is Stage.DENOISE:
        weights_at, act, out = denoise_w, denoise_act, 0
    elif stage is Stage.IMAGE_ENCODE:
        weights_at, act, out = encode_w, encode_act, video
    else:
        weights_at, act, out = decode_w, decode_act, output
    return Estimate(
        peak=by_stage[stage],
        peak_stage=stage,
        weights=weights_at,
        activation=act,
        output=out,
        overhead=overhead,
        by_stage=by_stage,
        denoise_feature=denoise_feature,
        decode_feature=decode_feature,
        load=load_peak(weights, options) + overhead if options.device == "cpu" else 0,
    )


@dataclass(frozen=True, slots=True)
class PreflightJob:
    options: PipelineOptions
    params: GenerationParams
    allow_output_changes: bool = True
    # A learned rung to start at (rungs up to it are applied first).
    start_at: RungId | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """Run the job with these options and params; `rung` None means as asked."""

    rung: RungId | None
    options: PipelineOptions
    params: GenerationParams
    estimate: Estimate
    budget: int
    changes: list[AppliedChange] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Nothing on the ladder is predicted to fit: the job is refused before it runs."""

    needed: int
    free: int
    reserve: int
    last_rung: RungId | None
    estimate: Estimate
    tried: tuple[RungId | None, ...]
    # Rungs that would have changed this job on a GPU and are not tried on this device (on a
    # CPU: the offloads, and keeping one expert of two on the device).
    not_here: tuple[RungId, ...] = ()
    # What would fit, searched with every memory saving that keeps the video applied: the
    # largest size of the same aspect (frames as asked), and the most frames (size as asked).
    fits_size: tuple[int, int] | None = None
    fits_frames: int | None = None

    @property
    def available(self) -> int:
        return max(0, self.free - self.reserve)

    @property
    def message(self) -> str:
        at = f"even at the last rung ({self.last_rung.value})" if self.last_rung else "as asked"
        skipped = (
            "; GPU only, not tried here: " + ", ".join(r.value for r in self.not_here)
            if self.not_here
            else ""
        )
        fits = [
            *([f"at {self.fits_size[0]}x{self.fits_size[1]}"] if self.fits_size else []),
            *([f"with {self.fits_frames} frames"] if self.fits_frames else []),
        ]
        if fits:
            skipped += "; it would fit " + " or ".join(fits)
        return (
            f"needs ~{format_bytes(self.needed)} {at}, peaking at "
            f"{self.estimate.needed_stage.value}; {format_bytes(self.free)} free minus a "
            f"{format_bytes(self.reserve)} reserve leaves {format_bytes(self.available)}"
            f"{skipped}"
        )


EstimateFn = Callable[[PipelineOptions, GenerationParams], Estimate]


def _preflight_cause(estimate: Estimate, budget: int) -> str:
    return (
        f"pre-flight predicted ~{format_bytes(estimate.needed)} at "
        f"{estimate.needed_stage.value} with {format_bytes(budget)} available"
    )


def choose_rung(
    estimate_fn: EstimateFn,
    free_bytes: int,
    reserve: int,
    ladder: Sequence[Rung],
    job: PreflightJob,
) -> Plan | Refusal:
    """The first plan (cumulative rungs) whose estimate fits ``free_bytes - reserve``.

    `free_bytes` is the memory the whole pipeline may use (weights included): the cap minus the
    worker's baseline, or the device's free memory plus what the idle pipeline already holds.
    """
    budget = free_bytes - reserve
    options, params = job.options, job.params
    changes: list[AppliedChange] = []
    rung_id: RungId | None = None
    if job.start_at is not None:
        options, params, changes = apply_up_to(
            ladder,
            job.start_at,
            options,
            params,
            allow_output_changes=job.allow_output_changes,
            cause="it worked before",
        )
        rung_id = job.start_at
    kind = device_kind(options.device)
    tried: list[RungId | None] = []

    def refused(needed: int, estimate: Estimate) -> Refusal:
        # Invariant: a refusal says which rungs it did not try for the device's sake, so a
        # person on a CPU knows a GPU would have had more room to move (the planner says so).
        not_here = tuple(
            r.id
            for r in ladder
            if kind not in r.devices
            and r.id is not RungId.FREE_CACHES
            and applies(r, DeviceKind.CUDA, job.allow_output_changes, job.options, job.params)
        )
        size, frames = (
            _what_fits(estimate_fn, saving, job.params, budget)
            if estimate.load <= budget
            else (None, None)
        )
        return Refusal(
            needed,
            free_bytes,
            reserve,
            rung_id,
            estimate,
            tuple(tried),
            not_here=not_here,
            fits_size=size,
            fits_frames=frames,
        )

    # The options with every rung that keeps the video (what a suggestion may assume).
    saving = options
    while True:
        estimate = estimate_fn(options, params)
        tried.append(rung_id)
        if estimate.needed <= budget:
            return Plan(rung_id, options, params, estimate, budget, changes)
        if estimate.load > budget:
            # No rung lowers a CPU load (ladder.helps_at): walking them would change the job
            # for nothing and refuse anyway.
            return refused(estimate.needed, estimate)
        rung = next_rung(
            ladder, rung_id, kind, job.allow_output_changes, options=options, params=params
        )
        while rung is not None and rung.id is RungId.FREE_CACHES:
            # Freeing caches does not change a prediction: it is a retry after a real OOM.
            rung = next_rung(
                ladder, rung.id, kind, job.allow_output_changes, options=options, params=params
            )
        if rung is None:
            return refused(estimate.needed, estimate)
        options, params, change = apply_rung(
            options, params, rung, cause=_preflight_cause(estimate, budget)
        )
        if not rung.changes_output:
            saving = options
        changes = [*changes, change]
        rung_id = rung.id


def _what_fits(
    estimate_fn: EstimateFn, options: PipelineOptions, params: GenerationParams, budget: int
) -> tuple[tuple[int, int] | None, int | None]:
    """(the largest width x height of the asked aspect, frames as asked; the most 4k+1 frames,
    size as asked) whose estimate fits `budget`, each None when nothing smaller fits.

    Sizes keep the multiple of 32 when the asked size has it (Wan 2.2 TI2V-5B needs it), else
    16. Both searches are bisections: the estimate never grows as a size or a frame count
    shrinks."""

    def fits(p: GenerationParams) -> bool:
        return estimate_fn(options, p).needed <= budget

    step = 32 if params.width % 32 == 0 and params.height % 32 == 0 else 16

    def sized(k: int) -> GenerationParams:
        height = max(step, round(k * step * params.height / params.width / step) * step)
        return params.model_copy(update={"width": k * step, "height": height})

    lo, hi = 0, params.width // step - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(sized(mid)) else (lo, mid - 1)
    size = (sized(lo).width, sized(lo).height) if lo and fits(sized(lo)) else None

    def framed(k: int) -> GenerationParams:
        return params.model_copy(update={"num_frames": 4 * k + 1})

    lo, hi = -1, (params.num_frames - 1) // 4 - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(framed(mid)) else (lo, mid - 1)
    frames = 4 * lo + 1 if lo >= 0 else None
    return size, frames


def with_scales(profile: MemoryProfile, denoise: float, decode: float) -> MemoryProfile:
    return profile.model_copy(update={"denoise_scale": denoise, "decode_scale": decode})
