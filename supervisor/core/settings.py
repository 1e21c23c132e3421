"""Settings: `config/default.toml`, then a user TOML file, then `GENVISOR_*` variables.

A bad value stops start-up with a `ConfigError` that names the key, the value given and what is
allowed. Every setting is flat (one TOML key, one variable) so that `GENVISOR_<NAME>` always works.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    ByteSize,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from supervisor.core.exceptions import ConfigError

__all__ = [
    "CONFIG_DIR",
    "SHIPPED_CONFIG_DIR",
    "Settings",
    "UnknownSetting",
    "config_path",
    "load_settings",
    "unknown_environment",
]

# The config shipped with genvisor is package data (`supervisor/config`, a link to the top-level
# `config/` in a checkout, real files in a wheel): found the same way installed or not.
SHIPPED_CONFIG_DIR = Path(str(resources.files("supervisor") / "config"))
CONFIG_DIR = Path(os.environ.get("GENVISOR_CONFIG_DIR", SHIPPED_CONFIG_DIR))


def config_path(name: str) -> Path:
    """`name` in the config directory (GENVISOR_CONFIG_DIR), else the one shipped with genvisor."""
    candidate = CONFIG_DIR / name
    return candidate if candidate.is_file() else SHIPPED_CONFIG_DIR / name


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

MIN_TOKEN_CHARS = 16
# Printable ASCII without spaces: HTTP header values are bytes, so a non-ASCII token could not
# be sent as the same text it was configured as.
_TOKEN = re.compile(rf"[!-~]{{{MIN_TOKEN_CHARS},}}")
TOKEN_RULE = (
    f"api_token (GENVISOR_API_TOKEN) must be at least {MIN_TOKEN_CHARS} printable ASCII "
    "characters without spaces; make one with "
    "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
)


_DEVICE = re.compile(r"(cpu|cuda):\d+")
_SIZE = re.compile(r"(|\s*\d+(\.\d+)?\s*[A-Za-z]*\s*)")
_LIMIT_RULE = (
    "device_memory_limit must be one size ('2GiB', '1536MiB'; empty for no cap) or one per "
    "device ('cpu:0=1536MiB,cpu:1=3GiB')"
)


def _default_home() -> Path:
    return Path.home() / ".genvisor"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GENVISOR_", extra="forbid", frozen=True)

    home: Path = Field(default_factory=_default_home, description="Data directory")
    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=0, le=65535)
    api_token: SecretStr | None = Field(
        default=None, description="Bearer token required on HTTP and the WebSocket when set"
    )
    allowed_origins: list[str] = Field(default_factory=list)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "text"] = "auto"

    journal_retention: int = Field(default=100_000, ge=100)
    subscriber_buffer: int = Field(default=1024, ge=8)
    transition_history: int = Field(default=200, ge=10)

    worker_max_restarts: int = Field(default=3, ge=0)
    worker_restart_period: float = Field(default=60.0, gt=0)
    restart_backoff_base: float = Field(default=0.2, ge=0)
    restart_backoff_max: float = Field(default=10.0, ge=0)
    shutdown_timeout: float = Field(default=5.0, gt=0)

    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    # The weights' and activations' dtype: "auto" is bfloat16 on a GPU (what Wan's weights are
    # published in, half of float32's memory) and float32 on a CPU (bfloat16 matmuls there are
    # slow on most processors).
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    stall_timeout: float = Field(default=30.0, gt=0)
    heartbeat_interval: float = Field(default=1.0, gt=0)

    # Model store (actors/models). None: the standard Hugging Face cache / endpoint / stored token.
    allow_downloads: bool = True
    # Run a job on the registry's fallback model when its own can not be made available.
    allow_fallback_models: bool = True
    allow_pickle_weights: bool = False
    hf_token: SecretStr | None = Field(
        default=None, description="Hugging Face token for gated models (else HF_TOKEN)"
    )
    hf_endpoint: str | None = Field(
        default=None, description="Hub address (else HF_ENDPOINT, else huggingface.co)"
    )
    hf_cache_dir: Path | None = Field(
        default=None, description="Hugging Face cache (else the standard HF_HUB_CACHE)"
    )
    models_file: Path | None = Field(
        default=None, description="a TOML file of your own model registry entries"
    )
    download_retries: int = Field(default=4, ge=0, le=20)
    download_backoff_base: float = Field(default=1.0, ge=0)
    download_backoff_max: float = Field(default=30.0, ge=0)
    cancel_grace: float = Field(default=10.0, gt=0)
    worker_start_timeout: float = Field(default=180.0, gt=0)
    # A job running when its worker crashed or hung is tried again this many times.
    job_crash_retries: int = Field(default=1, ge=0)
    default_model: str = "tiny-wan"
    queue_max: int = Field(default=100, ge=1)
    max_prompt_chars: int = Field(default=2000, ge=1, le=20000)
    max_request_bytes: int = Field(default=65536, ge=1024)
    # Uploaded images (POST /v1/inputs): bytes of one upload, and pixels checked on the header
    # before anything is decoded (a decompression bomb is refused at no cost).
    max_input_bytes: int = Field(default=20 * 1024**2, ge=1024)
    max_input_pixels: int = Field(default=40_000_000, ge=256)
    job_retention_days: float = Field(default=30.0, gt=0)

    # VRAM monitor, pre-flight and the recovery ladder (issue 6)
    vram_sample_interval: float = Field(default=0.5, gt=0)
    # A device query (NVML) not answered within this many seconds is abandoned: the sample is
    # skipped and the service reads degraded until the driver answers again.
    vram_sample_deadline: float = Field(default=2.0, gt=0)
    memory_reserve: ByteSize = Field(default=ByteSize(256 * 1024**2), ge=0)
    max_recovery_attempts: int = Field(default=6, ge=0)
    pressure_warning: float = Field(default=0.85, gt=0, lt=1)
    pressure_critical: float = Field(default=0.95, gt=0, le=1)
    expect_gpu: bool = False
    clear_learned_strategies: bool = False
    # "auto": one worker on the device `device` resolves to; or a list ("cuda:0,cuda:1",
    # "cpu:0,cpu:1"): one supervised worker per device, each job placed where it fits best.
    devices: str = "auto"
    # Worker memory cap ("2GiB"; empty = none): CUDA memory fraction, or RLIMIT_AS on the CPU.
    # One value for every worker, or one per device ("cpu:0=1536MiB,cpu:1=3GiB").
    device_memory_limit: str = ""
    # Where the workers run: "local" (child processes of this server) or "ray" (one Ray actor
    # per entry of `devices`, on whichever node of the cluster at `ray_address` has one free;
    # `pip install genvisor[ray]`). Ray's own restarts are off: the supervisor decides.
    executor: Literal["local", "ray"] = "local"
    # A Ray cluster's address ("10.0.0.5:6379", or "auto" for the cluster this host belongs
    # to); empty with executor = "ray" starts a private local one.
    ray_address: str = ""
    # Where a Ray worker finds its model: "shared" (the server's own paths: one host, or the
    # home and the cache on a file system every node mounts at the same path), or "node"
    # (each node pulls what it lacks into its own Hugging Face cache and rebuilds tiny builds).
    ray_model_cache: Literal["shared", "node"] = "shared"

    @field_validator("api_token")
    @classmethod
    def _token_strong_enough(cls, value: SecretStr | None) -> SecretStr | None:
        # A short token can be guessed over the network; an empty one, or one with spaces at
        # either end, could never be presented (the Authorization value is stripped), so spaces
        # are refused altogether. The error (TOKEN_RULE) never repeats the token.
        if value is not None and not _TOKEN.fullmatch(value.get_secret_value()):
            raise PydanticCustomError("api_token_weak", TOKEN_RULE)
        return value

    @field_validator("devices")
    @classmethod
    def _devices_listed(cls, value: str) -> str:
        if value.strip() == "auto":
            return "auto"
        listed = [d.strip() for d in value.split(",")]
        for device in listed:
            if not _DEVICE.fullmatch(device):
                raise PydanticCustomError(
                    "devices",
                    "devices must be 'auto' or a comma-separated list of cpu:N / cuda:N "
                    "(e.g. 'cuda:0,cuda:1' or 'cpu:0,cpu:1'); '{device}' is neither",
                    {"device": device},
                )
        if len(set(listed)) != len(listed):
            raise PydanticCustomError("devices", "devices names a device twice")
        if len({d.split(":", 1)[0] for d in listed}) > 1:
            raise PydanticCustomError(
                "devices", "devices must all be of one kind (all cpu:N or all cuda:N)"
            )
        return ",".join(listed)

    @field_validator("device_memory_limit")
    @classmethod
    def _limits_are_sizes(cls, value: str, info: ValidationInfo) -> str:
        if "=" not in value:
            if not _SIZE.fullmatch(value):
                raise PydanticCustomError("device_memory_limit", _LIMIT_RULE)
            return value
        devices = info.data.get("devices", "auto")
        if devices == "auto":
            raise PydanticCustomError(
                "device_memory_limit",
                "a cap per device needs a devices list (devices = 'cpu:0,cpu:1'); with "
                "devices = 'auto' give one size",
            )
        seen: set[str] = set()
        for part in value.split(","):
            device, _, size = (p.strip() for p in part.partition("="))
            if not _DEVICE.fullmatch(device) or not size or not _SIZE.fullmatch(size):
                raise PydanticCustomError("device_memory_limit", _LIMIT_RULE)
            if device in seen or device not in devices.split(","):
                raise PydanticCustomError(
                    "device_memory_limit",
                    "each device must be named once and be one of devices ({devices}); "
                    "'{device}' is not",
                    {"devices": devices, "device": device},
                )
            seen.add(device)
        return value

    def device_list(self) -> tuple[str, ...] | None:
        """The devices of the `devices` list, in order; None for "auto" (one worker on the
        device `device` resolves to)."""
        return None if self.devices == "auto" else tuple(self.devices.split(","))

    def memory_limits(self) -> dict[str, str] | None:
        """The per-device caps ({"cpu:0": "1536MiB"}); None when one value is for all."""
        if "=" not in self.device_memory_limit:
            return None
        pairs = (p.partition("=") for p in self.device_memory_limit.split(","))
        return {d.strip(): size.strip() for d, _, size in pairs}

    def memory_limit_for(self, device: str) -> str:
        """The cap of the worker on `device` ("" for none)."""
        per_device = self.memory_limits()
        if per_device is None:
            return self.device_memory_limit
        return per_device.get(device, "")

    @field_validator("allowed_origins")
    @classmethod
    def _origins_have_scheme(cls, value: list[str]) -> list[str]:
        for origin in value:
            if not origin.startswith(("http://", "https://")):
                raise ValueError(f"origin {origin!r} must start with http:// or https://")
        return [o.rstrip("/") for o in value]

    @property
    def is_exposed(self) -> bool:
        """True when the server binds beyond loopback (then a token is required)."""
        return self.host not in LOOPBACK_HOSTS

    @property
    def data_dir(self) -> Path:
        return self.home

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Precedence: explicit arguments (CLI flags), then the environment, then the TOML files.
        return (init_settings, env_settings, _TomlLayer(settings_cls))


# Invariant: set only for the duration of one load_settings call.
_toml_values: ContextVar[dict[str, Any] | None] = ContextVar("_toml_values", default=None)


class _TomlLayer(PydanticBaseSettingsSource):
    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        values = _toml_values.get() or {}
        return values.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_toml_values.get() or {})


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError as exc:
        raise ConfigError(key="--config", value=str(path), allowed="an existing TOML file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(key="--config", value=str(path), allowed=f"valid TOML ({exc})") from exc


def _fields_known() -> frozenset[str]:
    return frozenset(Settings.model_fields)


def _did_you_mean(name: str, known: frozenset[str]) -> str | None:
    """The known name closest to `name` (a typo, another case, a prefix away), if any is."""
    import difflib

    lowered = name.lower().removeprefix("genvisor_")
    if lowered in known:
        return lowered
    close = difflib.get_close_matches(lowered, sorted(known), n=1, cutoff=0.6)
    return close[0] if close else None


class UnknownSetting(ConfigError):
    """A settings file names a setting genvisor does not have: the name is blamed (with the
    nearest known one), not the value."""

    def __init__(self, *, key: str, value: object, source: str) -> None:
        super().__init__(key=key, value=value, allowed="a known setting", source=source)
        self.suggestion = _did_you_mean(key, _fields_known())
        where = f" in {source}" if source else ""
        hint = (
            f" — did you mean {self.suggestion}?"
            if self.suggestion
            else " (`genvisor docs` lists every setting)"
        )
        self.args = (f"unknown setting {key}{where}{hint}",)


# GENVISOR_* variables that are not settings but are read by genvisor all the same.
_OTHER_VARIABLES = frozenset({"GENVISOR_URL", "GENVISOR_DEBUG", "GENVISOR_CONFIG_DIR"})


def unknown_environment(environ: Mapping[str, str] | None = None) -> list[str]:
    """A warning for each `GENVISOR_*` variable that names no setting (it would be ignored),
    with the nearest known name: `GENVISOR_PROT` → did you mean GENVISOR_PORT?"""
    env = os.environ if environ is None else environ
    others = {v.removeprefix("GENVISOR_").lower() for v in _OTHER_VARIABLES}
    known = _fields_known() | others
    warnings = []
    for name in sorted(env):
        rest = name[len("GENVISOR_") :]
        if not name.upper().startswith("GENVISOR_") or rest.lower() in known:
            continue
        guess = _did_you_mean(rest, known)
        hint = f" — did you mean GENVISOR_{guess.upper()}?" if guess else ""
        warnings.append(f"{name} is not a genvisor setting and is ignored{hint}")
    return warnings


def load_settings(
    config_file: Path | None = None,
    *,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build the settings; raise ConfigError naming the first bad key."""
    merged: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for path in (config_path("default.toml"), config_file):
        if path is None:
            continue
        data = _read_toml(path)
        for key, value in data.items():
            if key not in _fields_known():
                raise UnknownSetting(key=key, value=value, source=str(path))
            merged[key] = value
            sources[key] = str(path)
    for key in overrides or {}:
        sources[key] = "arguments"
    token = _toml_values.set(merged)
    try:
        return Settings(**dict(overrides or {}))
    except ValidationError as exc:
        raise _config_error(exc, sources) from None
    finally:
        _toml_values.reset(token)


def _config_error(exc: ValidationError, sources: Mapping[str, str]) -> ConfigError:
    first = exc.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "?"
    top = str(first["loc"][0]) if first["loc"] else key
    env_name = f"GENVISOR_{top.upper()}"
    source = "environment " + env_name if env_name in os.environ else sources.get(top, "")
    value = os.environ.get(env_name, first.get("input"))
    if top in _SECRET_FIELDS:
        # A secret is never printed, not even a refused one: only its length.
        value = _Hidden(len(value) if isinstance(value, str) else 0)
    return ConfigError(key=key, value=value, allowed=_plain(first["msg"], value), source=source)


_LIBRARY_PREFIXES = ("Value error, ", "Assertion failed, ")
_CHOICE = re.compile(r"'([^']*)'")


def _plain(message: str, value: object) -> str:
    """A validation message in genvisor's words: no library prefix ("Value error, "), "must
    be" for pydantic's "Input should be", and the nearest choice for a mistyped one."""
    for prefix in _LIBRARY_PREFIXES:
        message = message.removeprefix(prefix)
    if message.startswith("Input should be "):
        message = "must be " + message.removeprefix("Input should be ")
        choices = _CHOICE.findall(message)
        if choices and isinstance(value, str):
            guess = _did_you_mean(value, frozenset(choices))
            if guess is not None and guess != value:
                message += f" — did you mean {guess}?"
    return message


_SECRET_FIELDS = frozenset({"api_token", "hf_token"})


class _Hidden:
    """Stands for a secret's value in an error message (its repr shows only the length)."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __repr__(self) -> str:
        return f"<hidden, {self.length} characters>"
