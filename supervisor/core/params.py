"""What a person asks for and how the pipeline is set up: the domain types of a job.

The worker protocol carries them (`actors.worker.protocol`), the job store keeps them, recovery
rewrites them; they live here so that none of those depends on another to know what a job is.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "INPUT_ID_PATTERN",
    "JOB_ID_PATTERN",
    "Dtype",
    "Fit",
    "FrozenModel",
    "GenerationParams",
    "JobInputs",
    "Mode",
    "Offload",
    "PipelineClass",
    "PipelineOptions",
    "mode_of",
]

# Job ids become file names in the worker: only the server generates them, and only this
# alphabet is accepted, so no client string can reach the file system as a path.
JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
# An uploaded input is named by the sha256 of its bytes; the file is `<home>/inputs/<hex>`, so an
# id that matches this is the only thing that ever becomes an input's path.
INPUT_ID_PATTERN = r"^sha256:[0-9a-f]{64}$"


class Dtype(StrEnum):
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"


class Mode(StrEnum):
    """What a job starts from: text alone, a first frame, or a first and a last frame."""

    T2V = "t2v"
    I2V = "i2v"
    FLF2V = "flf2v"


class Fit(StrEnum):
    """How an input image meets the requested size: `crop` keeps the aspect and cuts the
    overflow (centred), `pad` keeps the whole image and fills the rest with black,
    `stretch` scales each side on its own."""

    CROP = "crop"
    PAD = "pad"
    STRETCH = "stretch"


class PipelineClass(StrEnum):
    """The diffusers pipelines a model may name (the registry's `pipeline_class`): no other
    class is ever imported or instantiated from a model's files."""

    WAN = "WanPipeline"
    WAN_I2V = "WanImageToVideoPipeline"


class Offload(StrEnum):
    NONE = "none"
    MODEL = "model"
    GROUP = "group"
    SEQUENTIAL = "sequential"


class FrozenModel(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PipelineOptions(FrozenModel):
    dtype: Dtype = Dtype.FLOAT32
    device: str = Field(default="cpu", pattern=r"^(cpu|cuda(:\d+)?)$")
    vae_tiling: bool = False
    vae_slicing: bool = False
    layerwise_fp8: bool = False
    offload: Offload = Offload.NONE
    # The model has two experts (Wan 2.2 A14B: `transformer` then `transformer_2`), from its
    # registry entry; only then does the expert-offload rung apply.
    two_experts: bool = False
    # Only the active expert on the device; the idle one waits in host memory (GPU only).
    expert_offload: bool = False


class GenerationParams(FrozenModel):
    prompt: str = Field(min_length=1, max_length=4000)
    negative_prompt: str = Field(default="", max_length=4000)
    # Wan latents are 8x smaller spatially and patchified by 2: sizes are multiples of 16.
    width: int = Field(default=832, ge=16, le=4096, multiple_of=16)
    height: int = Field(default=480, ge=16, le=4096, multiple_of=16)
    # Wan's VAE compresses time by 4 after the first frame: 4k+1 frames.
    num_frames: int = Field(default=17, ge=1, le=1025)
    steps: int = Field(default=30, ge=1, le=1000)
    guidance_scale: float = Field(default=5.0, ge=0.0, le=50.0)
    seed: int = Field(default=0, ge=0, lt=2**63)
    fps: int = Field(default=16, ge=1, le=120)

    @field_validator("num_frames")
    @classmethod
    def _four_k_plus_one(cls, value: int) -> int:
        if (value - 1) % 4:
            raise ValueError(f"num_frames must be 4k+1 (1, 5, 9, 13, 17, ...), got {value}")
        return value


class JobInputs(FrozenModel):
    """The stored images a job starts from (ids from POST /v1/inputs) and how they are fitted."""

    image: str | None = Field(default=None, pattern=INPUT_ID_PATTERN)
    last_image: str | None = Field(default=None, pattern=INPUT_ID_PATTERN)
    fit: Fit = Fit.CROP

    @property
    def mode(self) -> Mode:
        return mode_of(self.image, self.last_image)


def mode_of(image: object | None, last_image: object | None) -> Mode:
    """What a job starts from, given its first and last frame (ids or paths; None: absent)."""
    if last_image is not None:
        return Mode.FLF2V
    return Mode.I2V if image is not None else Mode.T2V
