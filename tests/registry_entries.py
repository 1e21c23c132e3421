"""Registry entries (the `models_file` TOML) for the tiny-wan builds the tests and the drill
register under other names: tiny-wan's generation defaults and limits, with the source each
names (a local folder in the home, or a repo on a loopback Hub)."""

from __future__ import annotations

__all__ = ["hub_tiny_entry", "local_tiny_entry"]


def _entry(name: str, description: str, source: str, weights_bytes: int, extra: str) -> str:
    return f"""
[models."{name}"]
description = "{description}"
{source}
pipeline_class = "WanPipeline"
defaults = {{ width = 32, height = 32, num_frames = 5, steps = 2, guidance_scale = 1.0, fps = 8 }}
limits = {{ max_width = 256, max_height = 256, max_frames = 33, max_steps = 1000 }}
memory = {{ weights_bytes = {weights_bytes}, activation_base_bytes = 67108864, activation_bytes_per_latent_token = 4096.0 }}
{extra}"""  # noqa: E501


def local_tiny_entry(
    name: str, description: str, *, weights_bytes: int = 300_000, fallback: str | None = None
) -> str:
    """A model in `<home>/models/<name>` (a copy or a `make-tiny --out` build)."""
    extra = f'fallback = "{fallback}"\n' if fallback else ""
    source = f'source = "local"\nlocal_path = "models/{name}"'
    return _entry(name, description, source, weights_bytes, extra)


def hub_tiny_entry(name: str, repo_id: str, description: str) -> str:
    """A model pulled from `repo_id` at revision main (the drill's loopback Hub)."""
    source = f'source = "hub"\nrepo_id = "{repo_id}"\nrevision = "main"'
    return _entry(name, description, source, 300_000, "")
