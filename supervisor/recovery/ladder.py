"""The VRAM recovery ladder (config/recovery.toml): ordered rungs of less memory.

Pure functions over immutable data. Rungs are cumulative: options set by an earlier rung stay
set, so "the rung a job runs at" means that rung plus every earlier one that applied.
`next_rung` skips rungs for another device, output-changing rungs when the job opted out, and
rungs that would change nothing (tiling already on, one frame left, ...). After a real
out-of-memory, `rung_for_failure` also skips rungs that do not lower the memory of the stage that
failed (tiling does nothing for a load; fewer frames nothing for loading the weights).

Invariants of the output-changing rungs: frame counts stay 4k+1 (Wan's VAE compresses time by
4 after the first frame), sizes stay multiples of 16 with the aspect ratio kept as closely as
that allows, and every such rung strictly reduces its quantity (or does not apply).
"""

from __future__ import annotations

import tomllib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, JsonValue, ValidationError

from supervisor.core.exceptions import ConfigError
from supervisor.core.params import GenerationParams, Offload, PipelineOptions
from supervisor.core.settings import config_path
from supervisor.errors.report import Stage

__all__ = [
    "AppliedChange",
    "DeviceKind",
    "Ladder",
    "Rung",
    "RungId",
    "applies",
    "apply_rung",
    "apply_up_to",
    "device_kind",
    "load_ladder",
    "next_rung",
    "oom_cause",
    "rung_for_failure",
]

DEFAULT_LADDER_PATH = config_path("recovery.toml")


class RungId(StrEnum):
    FREE_CACHES = "free_caches"
    VAE_TILING = "vae_tiling"
    LAYERWISE_FP8 = "layerwise_fp8"
    EXPERT_OFFLOAD = "expert_offload"
    MODEL_OFFLOAD = "model_offload"
    GROUP_OFFLOAD = "group_offload"
    SEQUENTIAL_OFFLOAD = "sequential_offload"
    FEWER_FRAMES = "fewer_frames"
    LOWER_RESOLUTION = "lower_resolution"
    FEWER_STEPS = "fewer_steps"


class DeviceKind(StrEnum):
    CUDA = "cuda"
    CPU = "cpu"


def device_kind(device: str) -> DeviceKind:
    return DeviceKind.CUDA if device.startswith("cuda") else DeviceKind.CPU


class _OptionChanges(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    vae_tiling: bool | None = None
    vae_slicing: bool | None = None
    layerwise_fp8: bool | None = None
    expert_offload: bool | None = None
    offload: Offload | None = None


class _ParamChanges(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    frames_factor: float | None = Field(default=None, gt=0, lt=1)
    resolution_scale: float | None = Field(default=None, gt=0, lt=1)
    steps_factor: float | None = Field(default=None, gt=0, lt=1)


# The stages whose memory a rung can lower; a failure elsewhere (worker, unknown) tries any rung.
MEMORY_STAGES = (Stage.LOAD, Stage.ENCODE, Stage.DENOISE, Stage.IMAGE_ENCODE, Stage.DECODE)


class _RungConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: RungId
    description: str = Field(min_length=1)
    devices: list[DeviceKind] = Field(min_length=1)
    stages: list[Stage] = Field(default=list(MEMORY_STAGES), min_length=1)
    changes_output: bool
    options: _OptionChanges = _OptionChanges()
    params: _ParamChanges = _ParamChanges()


class _LadderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    rungs: list[_RungConfig] = Field(min_length=1)


@dataclass(frozen=True, slots=True)
class Rung:
    id: RungId
    description: str
    devices: frozenset[DeviceKind]
    changes_output: bool
    options: dict[str, Any] = field(default_factory=dict)
    stages: frozenset[Stage] = frozenset(MEMORY_STAGES)
    frames_factor: float | None = None
    resolution_scale: float | None = None
    steps_factor: float | None = None


Ladder = tuple[Rung, ...]


def load_ladder(path: Path = DEFAULT_LADDER_PATH) -> Ladder:
    """Read and validate the ladder; a bad file is a ConfigError naming the problem."""
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
        config = _LadderConfig.model_validate(raw)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(key="recovery ladder", value=str(path), allowed=str(exc)) from exc
    except ValidationError as exc:
        raise ConfigError(
            key="recovery ladder", value=str(path), allowed=str(exc.errors()[0]["msg"])
        ) from exc
    ids = [r.id for r in config.rungs]
    if len(set(ids)) != len(ids):
        raise ConfigError(key="recovery ladder", value=str(path), allowed="unique rung ids")
    for r in config.rungs:
        if not set(r.stages) <= set(MEMORY_STAGES):
            allowed = ", ".join(s.value for s in MEMORY_STAGES)
            raise ConfigError(key=f"rungs.{r.id.value}.stages", value=r.stages, allowed=allowed)
    return tuple(
        Rung(
            id=r.id,
            description=r.description,
            devices=frozenset(r.devices),
            changes_output=r.changes_output,
            options=r.options.model_dump(exclude_none=True),
            stages=frozenset(r.stages),
            frames_factor=r.params.frames_factor,
            resolution_scale=r.params.resolution_scale,
            steps_factor=r.params.steps_factor,
        )
        for r in config.rungs
    )


# -- parameter reductions ----------------------------------------------------------------------


def fewer_frames(frames: int, factor: float) -> int | None:
    """The next 4k+1 count at most ``frames * factor``, strictly fewer; None at one frame."""
    if frames <= 1:
        return None
    target = 4 * int((frames - 1) * factor // 4) + 1
    return min(target, frames - 4) if frames >= 5 else 1


def lower_resolution(width: int, height: int, scale: float) -> tuple[int, int] | None:
    """Width scaled down to a multiple of 16, height following the aspect ratio (multiple of
    16); None when the size cannot shrink any more."""
    new_w = max(16, int(width * scale) // 16 * 16)
    new_h = max(16, int(round(new_w * height / width / 16)) * 16)
    if new_w * new_h >= width * height:
        new_h = max(16, int(height * scale) // 16 * 16)
    if (new_w, new_h) == (width, height) or new_w * new_h >= width * height:
        return None
    return new_w, new_h


def fewer_steps(steps: int, factor: float) -> int | None:
    if steps <= 1:
        return None
    return max(1, min(steps - 1, int(steps * factor)))


# -- walking the ladder ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AppliedChange:
    """One applied rung, in words and as data (for job results and events)."""

    rung: RungId
    text: str
    changes_output: bool
    before: dict[str, JsonValue]
    after: dict[str, JsonValue]

    def as_dict(self) -> dict[str, JsonValue]:
        return {
            "rung": self.rung.value,
            "text": self.text,
            "changes_output": self.changes_output,
            "before": dict(self.before),
            "after": dict(self.after),
        }


_STAGE_WORDS = {
    Stage.LOAD: "model loading",
    Stage.ENCODE: "text encoding",
    Stage.DENOISE: "denoising",
    Stage.IMAGE_ENCODE: "VAE encode of the first frame",
    Stage.DECODE: "VAE decode",
    Stage.SAVE: "saving",
}


def oom_cause(stage: Stage, device: str) -> str:
    """'GPU memory ran out at VAE decode' / 'memory ran out at denoising'."""
    what = "GPU memory" if device_kind(device) is DeviceKind.CUDA else "memory"
    return f"{what} ran out at {_STAGE_WORDS.get(stage, stage.value)}"


def _changes(
    rung: Rung, options: PipelineOptions, params: GenerationParams
) -> tuple[dict[str, Any], dict[str, Any], str] | None:
    """(option updates, param updates, words) of `rung` from this state; None if it changes
    nothing. The free-caches rung always applies: its change is the retry itself."""
    opt = {k: v for k, v in rung.options.items() if getattr(options, k) != v}
    if opt.get("expert_offload") and (
        not options.two_experts or options.offload is not Offload.NONE
    ):
        # One expert has nothing to swap out, and an offload already moves each one by itself.
        del opt["expert_offload"]
    par: dict[str, Any] = {}
    words = rung.description
    if rung.frames_factor is not None:
        frames = fewer_frames(params.num_frames, rung.frames_factor)
        if frames is not None:
            par["num_frames"] = frames
            words = f"generated {frames} frames instead of {params.num_frames}"
    if rung.resolution_scale is not None:
        size = lower_resolution(params.width, params.height, rung.resolution_scale)
        if size is not None:
            par["width"], par["height"] = size
            words = f"generated at {size[0]}x{size[1]} instead of {params.width}x{params.height}"
    if rung.steps_factor is not None:
        steps = fewer_steps(params.steps, rung.steps_factor)
        if steps is not None:
            par["steps"] = steps
            words = f"ran {steps} denoising steps instead of {params.steps}"
    if not opt and not par and rung.id is not RungId.FREE_CACHES:
        return None
    return opt, par, words


def applies(
    rung: Rung,
    kind: DeviceKind,
    allow_output_changes: bool,
    options: PipelineOptions | None = None,
    params: GenerationParams | None = None,
) -> bool:
    if kind not in rung.devices or (rung.changes_output and not allow_output_changes):
        return False
    if options is None or params is None:
        return True
    return _changes(rung, options, params) is not None


def next_rung(
    ladder: Sequence[Rung],
    after: RungId | None,
    device_kind: DeviceKind,
    allow_output_changes: bool,
    *,
    options: PipelineOptions | None = None,
    params: GenerationParams | None = None,
) -> Rung | None:
    """The first applicable rung after `after` (from the top when None); None at the end.
    With `options` and `params`, rungs that would change nothing are skipped too."""
    start = 0
    if after is not None:
        ids = [r.id for r in ladder]
        start = ids.index(after) + 1 if after in ids else len(ladder)
    for rung in ladder[start:]:
        if applies(rung, device_kind, allow_output_changes, options, params):
            return rung
    return None


def helps_at(rung: Rung, stage: Stage, kind: DeviceKind) -> bool:
    """Whether `rung` can lower the memory of `stage` on this kind of device."""
    if stage not in MEMORY_STAGES:
        return True
    # Invariant: on a CPU a load peaks at the checkpoint read whole, at its stored dtype, next to
    # the model it fills (measured: a 490 MB float32 transformer adds 1.1 GB of address space
    # while loading, in float32 and bfloat16 alike). No pipeline option lowers that, so no rung
    # applies to an out-of-memory at load on a CPU: retrying would fail the same way.
    if stage is Stage.LOAD and kind is DeviceKind.CPU:
        return False
    return stage in rung.stages


def rung_for_failure(
    ladder: Sequence[Rung],
    tried: Collection[RungId],
    stage: Stage,
    device_kind: DeviceKind,
    allow_output_changes: bool,
    *,
    options: PipelineOptions,
    params: GenerationParams,
) -> Rung | None:
    """After a real out-of-memory at `stage`: the first rung, in ladder order, not tried yet that
    applies here and lowers that stage's memory; None when nothing is left.

    From the top, not from the last rung tried: a rung skipped for one stage (tiling after a
    denoise failure) is still there when a later attempt fails at another (decode)."""
    for rung in ladder:
        if rung.id in tried or not helps_at(rung, stage, device_kind):
            continue
        if applies(rung, device_kind, allow_output_changes, options, params):
            return rung
    return None


def apply_rung(
    options: PipelineOptions,
    params: GenerationParams,
    rung: Rung,
    *,
    cause: str | None = None,
) -> tuple[PipelineOptions, GenerationParams, AppliedChange]:
    """Apply one rung; the change's words end with "because <cause>" when a cause is given."""
    found = _changes(rung, options, params)
    opt, par, words = found if found is not None else ({}, {}, rung.description)
    new_options = PipelineOptions.model_validate({**options.model_dump(), **opt})
    new_params = GenerationParams.model_validate({**params.model_dump(), **par})
    before: dict[str, JsonValue] = {k: _json(getattr(options, k)) for k in opt}
    before.update({k: getattr(params, k) for k in par})
    after: dict[str, JsonValue] = {k: _json(v) for k, v in opt.items()}
    after.update(par)
    text = f"{words} because {cause}" if cause else words
    return new_options, new_params, AppliedChange(rung.id, text, rung.changes_output, before, after)


def apply_up_to(
    ladder: Sequence[Rung],
    target: RungId,
    options: PipelineOptions,
    params: GenerationParams,
    *,
    allow_output_changes: bool,
    cause: str | None = None,
) -> tuple[PipelineOptions, GenerationParams, list[AppliedChange]]:
    """Start a job at `target` (a learned rung): every applicable rung up to it, in order."""
    kind = device_kind(options.device)
    changes: list[AppliedChange] = []
    for rung in ladder:
        if rung.id is not RungId.FREE_CACHES and applies(
            rung, kind, allow_output_changes, options, params
        ):
            options, params, change = apply_rung(options, params, rung, cause=cause)
            changes.append(change)
        if rung.id is target:
            break
    return options, params, changes


def _json(value: object) -> JsonValue:
    return value.value if isinstance(value, StrEnum) else value  # type: ignore[return-value]
