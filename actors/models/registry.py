"""The model registry: `config/models.toml` plus the user's entries (`models_file`).

Each entry names where the weights come from (a Hub repo at a revision, or a local folder such
as the embedded `tiny-wan`), the diffusers pipeline class, default and allowed generation
parameters, a memory profile for the VRAM planner and an optional fallback model. A user entry
with the name of a shipped one replaces it.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from actors.models.model_errors import UnknownModel
from supervisor.core.exceptions import ConfigError
from supervisor.core.params import Mode, PipelineClass

__all__ = [
    "GenerationDefaults",
    "MemoryProfile",
    "ModelEntry",
    "ModelRegistry",
    "ModelSource",
    "ParamLimits",
    "load_registry",
]

# Wan: latents are 8x smaller spatially and patchified by 2, so sizes are multiples of 16; the
# VAE compresses time by 4 after the first frame, so frame counts are 4k+1.
SIZE_MULTIPLE = 16


class ModelSource(StrEnum):
    HUB = "hub"
    LOCAL = "local"


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ParamLimits(_Strict):
    max_width: int = Field(ge=SIZE_MULTIPLE, multiple_of=SIZE_MULTIPLE)
    max_height: int = Field(ge=SIZE_MULTIPLE, multiple_of=SIZE_MULTIPLE)
    max_frames: int = Field(ge=1)
    max_steps: int = Field(ge=1)

    @model_validator(mode="after")
    def _frames_form(self) -> Self:
        if (self.max_frames - 1) % 4:
            raise ValueError(f"max_frames must be 4k+1, got {self.max_frames}")
        return self


class GenerationDefaults(_Strict):
    width: int = Field(ge=SIZE_MULTIPLE, multiple_of=SIZE_MULTIPLE)
    height: int = Field(ge=SIZE_MULTIPLE, multiple_of=SIZE_MULTIPLE)
    num_frames: int = Field(ge=1)
    steps: int = Field(ge=1)
    guidance_scale: float = Field(ge=0)
    fps: int = Field(ge=1, le=120)


class MemoryProfile(_Strict):
    """What the VRAM planner starts from. `seed = true` marks figures that are estimates, not
    measurements: the VRAM helper calibrates them on a real device and clears the flag."""

    weights_bytes: int = Field(ge=0)
    # Peak activation bytes ~ base + per_latent_token * (frames/4+1) * (h/16) * (w/16).
    activation_base_bytes: int = Field(ge=0)
    activation_bytes_per_latent_token: float = Field(ge=0)
    seed: bool = True


class ModelEntry(_Strict):
    name: str
    description: str = ""
    source: ModelSource
    repo_id: str | None = Field(default=None, pattern=r"^[\w.-]+/[\w.-]+$")
    revision: str = "main"
    # LOCAL: a folder, relative to the genvisor home unless absolute.
    local_path: str | None = None
    pipeline_class: PipelineClass
    # What a job may start from. Default: text for WanPipeline, a first frame for
    # WanImageToVideoPipeline. A model that serves both (Wan 2.2 TI2V-5B) lists both.
    modes: tuple[Mode, ...] = ()
    # Sizes must be multiples of this: 16 for Wan 2.1 and A14B (VAE 8 x patch 2), 32 for the
    # Wan 2.2 VAE (16 x patch 2) of TI2V-5B.
    size_multiple: Literal[16, 32] = 16
    # A local model that is a tiny build (`make-tiny --variant`): what repair rebuilds it as.
    tiny_variant: Literal["t2v", "i2v", "a14b", "a14b-i2v", "ti2v"] | None = None
    # Denoisers: 2 for Wan 2.2 A14B (a high-noise and a low-noise expert), else 1.
    experts: Literal[1, 2] = 1
    defaults: GenerationDefaults
    limits: ParamLimits
    memory: MemoryProfile
    fallback: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.source is ModelSource.HUB and not self.repo_id:
            raise ValueError("a hub model needs repo_id")
        if self.source is ModelSource.LOCAL and not self.local_path:
            raise ValueError("a local model needs local_path")
        problems = self.check_params(
            width=self.defaults.width,
            height=self.defaults.height,
            num_frames=self.defaults.num_frames,
            steps=self.defaults.steps,
        )
        if problems:
            raise ValueError("defaults break the limits: " + "; ".join(problems))
        if self.fallback == self.name:
            raise ValueError("a model can not be its own fallback")
        if not self.modes:
            default = Mode.T2V if self.pipeline_class is PipelineClass.WAN else Mode.I2V
            object.__setattr__(self, "modes", (default,))
        if Mode.FLF2V in self.modes and Mode.I2V not in self.modes:
            raise ValueError("a first-last-frame model (flf2v) serves first-frame jobs (i2v) too")
        return self

    def serves(self, mode: Mode) -> bool:
        return mode in self.modes

    def check_params(self, *, width: int, height: int, num_frames: int, steps: int) -> list[str]:
        """Each problem as a sentence; empty when the parameters suit this model."""
        lim = self.limits
        problems = [
            f"{label} {value} must be a multiple of {self.size_multiple} and at most {top}"
            for label, value, top in (
                ("width", width, lim.max_width),
                ("height", height, lim.max_height),
            )
            if value % self.size_multiple or not self.size_multiple <= value <= top
        ]
        if (num_frames - 1) % 4 or not 1 <= num_frames <= lim.max_frames:
            problems.append(f"num_frames {num_frames} must be 4k+1 and at most {lim.max_frames}")
        if not 1 <= steps <= lim.max_steps:
            problems.append(f"steps {steps} must be between 1 and {lim.max_steps}")
        return problems

    def local_dir(self, home: Path) -> Path:
        if self.local_path is None:
            raise ValueError(f"{self.name} is not a local model")
        path = Path(self.local_path).expanduser()
        return path if path.is_absolute() else home / path


class _RegistryFile(_Strict):
    models: dict[str, dict[str, object]] = Field(default_factory=dict)


class ModelRegistry:
    """Entries by name, validated together (every fallback names a known entry)."""

    def __init__(self, entries: Iterable[ModelEntry]) -> None:
        self._entries = {entry.name: entry for entry in entries}
        for entry in self._entries.values():
            if entry.fallback is not None and entry.fallback not in self._entries:
                raise ConfigError(
                    key=f"models.{entry.name}.fallback",
                    value=entry.fallback,
                    allowed=f"a registered model ({', '.join(self.names())})",
                )

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[ModelEntry]:
        return [self._entries[name] for name in self.names()]

    def get(self, name: str) -> ModelEntry:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownModel(model=name, known=self.names()) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries


def _read_entries(path: Path) -> list[ModelEntry]:
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
        parsed = _RegistryFile.model_validate(raw)
        return [
            ModelEntry.model_validate({"name": name, **body})
            for name, body in parsed.models.items()
        ]
    except FileNotFoundError as exc:
        raise ConfigError(key="models_file", value=str(path), allowed="an existing file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            key="models_file", value=str(path), allowed=f"valid TOML ({exc})"
        ) from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ConfigError(
            key=f"models.{key}", value=first.get("input"), allowed=first["msg"], source=str(path)
        ) from None


def load_registry(config_dir: Path, user_files: Iterable[Path | None] = ()) -> ModelRegistry:
    """Shipped entries from `<config_dir>/models.toml`, then each user file in order."""
    entries: dict[str, ModelEntry] = {}
    for path in (config_dir / "models.toml", *user_files):
        if path is None:
            continue
        for entry in _read_entries(path):
            entries[entry.name] = entry
    return ModelRegistry(entries.values())
