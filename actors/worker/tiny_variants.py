"""Tiny builds of every Wan shape genvisor serves: real diffusers components, tiny random weights.

`tiny_wan.py` builds the text-to-video shape of Wan 2.1 (`t2v`, unchanged bytes). This module
builds the others from the same tiny parts, each shaped as its real model is
(diffusers' own Wan 2.1 / 2.2 pipeline tests use the same layouts):

- ``i2v``: Wan 2.1 image-to-video. `WanImageToVideoPipeline` with a CLIP vision encoder and its
  image processor; the transformer takes 36 input channels (16 noise + 16 image latents + 4
  mask) and cross-attends to the image tokens (``image_dim``, ``added_kv_proj_dim``). First
  frame only, as Wan2.1-I2V: first-last-frame is a model of its own there (FLF2V, whose image
  embedder expects both frames' tokens), and the two-expert ``a14b-i2v`` serves it here.
- ``a14b``: Wan 2.2 A14B text-to-video: two experts, ``transformer`` (high noise) and
  ``transformer_2`` (low noise), switched at ``boundary_ratio`` of the schedule.
- ``a14b-i2v``: Wan 2.2 A14B image-to-video: two 36-channel experts, no image encoder.
- ``ti2v``: Wan 2.2 TI2V-5B: one expert over the Wan 2.2 VAE (48 latent channels, a 2x2 patch,
  16x spatial compression) with ``expand_timesteps`` (the first frame's latent is the image's
  and is never noised). Text or image, so sizes are multiples of 32.

Invariant (as for tiny-wan): a build is a pure function of the variant and the seed, because
every random initialisation runs under `torch.manual_seed` on the CPU and the tokenizer and the
image processor have fixed settings: repair rebuilds them byte for byte.
"""

from __future__ import annotations

import shutil
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKLWan,
    UniPCMultistepScheduler,
    WanImageToVideoPipeline,
    WanPipeline,
)
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel
from transformers.utils import logging as hf_logging

from actors.worker.tiny_wan import (
    DEFAULT_SEED,
    TinyWanBuild,
    _describe,
    _text_encoder,
    _tokenizer,
    _vae,
    build_tiny_wan,
    tiny_transformer,
)

__all__ = ["TINY_VARIANT_NAMES", "TinyVariant", "build_tiny_variant", "make_variant_pipeline"]

# The CLIP encoder's width: the transformer's image embedder takes tokens of this size.
_IMAGE_DIM = 8


class TinyVariant(StrEnum):
    T2V = "t2v"
    I2V = "i2v"
    A14B = "a14b"
    A14B_I2V = "a14b-i2v"
    TI2V = "ti2v"


# The model each variant is registered as (config/models.toml).
TINY_VARIANT_NAMES: dict[TinyVariant, str] = {
    TinyVariant.T2V: "tiny-wan",
    TinyVariant.I2V: "tiny-wan-i2v",
    TinyVariant.A14B: "tiny-wan-a14b",
    TinyVariant.A14B_I2V: "tiny-wan-a14b-i2v",
    TinyVariant.TI2V: "tiny-wan-ti2v",
}


def _transformer(
    in_channels: int, out_channels: int, *, image: bool = False, seed: int = DEFAULT_SEED
) -> Any:
    torch.manual_seed(seed)
    return tiny_transformer(
        in_channels=in_channels, out_channels=out_channels, image_dim=_IMAGE_DIM if image else None
    )


def _wan22_vae(seed: int) -> Any:
    torch.manual_seed(seed)
    return AutoencoderKLWan(
        base_dim=3,
        z_dim=48,
        in_channels=12,
        out_channels=12,
        is_residual=True,
        patch_size=2,
        latents_mean=[0.0] * 48,
        latents_std=[1.0] * 48,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        scale_factor_spatial=16,
        scale_factor_temporal=4,
        temperal_downsample=[False, True, True],
    ).eval()


def _image_encoder(seed: int) -> tuple[Any, Any]:
    torch.manual_seed(seed)
    config = CLIPVisionConfig(
        hidden_size=_IMAGE_DIM,
        projection_dim=_IMAGE_DIM,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        intermediate_size=16,
        patch_size=8,
    )
    return CLIPVisionModel(config).eval(), CLIPImageProcessor(crop_size=32, size=32)


def _scheduler() -> UniPCMultistepScheduler:
    return UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )


def make_variant_pipeline(variant: TinyVariant, seed: int = DEFAULT_SEED) -> Any:
    """The variant's pipeline in memory, float32 on the CPU (t2v: build it with tiny_wan)."""
    if variant is TinyVariant.T2V:
        raise ValueError("t2v is tiny-wan itself: actors.worker.tiny_wan.make_pipeline")
    tokenizer = _tokenizer()
    torch.manual_seed(seed)
    text_encoder = _text_encoder(len(tokenizer))
    common: dict[str, Any] = {
        "tokenizer": tokenizer,
        "text_encoder": text_encoder,
        "scheduler": _scheduler(),
    }
    if variant is TinyVariant.TI2V:
        return WanPipeline(
            **common,
            vae=_wan22_vae(seed),
            transformer=_transformer(48, 48, seed=seed),
            expand_timesteps=True,
        )
    torch.manual_seed(seed)
    vae = _vae()
    if variant is TinyVariant.I2V:
        encoder, processor = _image_encoder(seed)
        return WanImageToVideoPipeline(
            **common,
            vae=vae,
            image_encoder=encoder,
            image_processor=processor,
            transformer=_transformer(36, 16, image=True, seed=seed),
        )
    # The two experts start from different seeds: a pipeline that ran only one of them would
    # give another video, so a test can tell that the boundary was crossed.
    if variant is TinyVariant.A14B:
        return WanPipeline(
            **common,
            vae=vae,
            transformer=_transformer(16, 16, seed=seed),
            transformer_2=_transformer(16, 16, seed=seed + 1),
            boundary_ratio=0.875,
        )
    return WanImageToVideoPipeline(
        **common,
        vae=vae,
        transformer=_transformer(36, 16, seed=seed),
        transformer_2=_transformer(36, 16, seed=seed + 1),
        boundary_ratio=0.9,
    )


def build_tiny_variant(
    out: Path, variant: TinyVariant, *, seed: int = DEFAULT_SEED, overwrite: bool = False
) -> TinyWanBuild:
    """Build `variant` into `out` through a sibling staging folder renamed into place, so `out`
    is absent or complete (as `build_tiny_wan`)."""
    if variant is TinyVariant.T2V:
        return build_tiny_wan(out, seed=seed, overwrite=overwrite)
    out = out.resolve()
    if out.exists() and not overwrite and (out / "model_index.json").is_file():
        return _describe(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        hf_logging.disable_progress_bar()  # as build_tiny_wan: one line, no bar
        make_variant_pipeline(variant, seed).save_pretrained(staging, safe_serialization=True)
        staging.chmod(0o755)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return _describe(out)
