"""The embedded model `tiny-wan`: a real diffusers `WanPipeline` with tiny random weights.

Every component is the real class a Wan 2.1 checkpoint uses (transformer, VAE, UMT5 encoder,
scheduler); only the sizes are tiny. The tokenizer is built here with the `tokenizers` library
(byte-level BPE over the 256 byte symbols, no merges), so nothing is downloaded.

Invariant: the build is a pure function of `seed` — same seed, byte-identical files — because
every random initialisation runs under `torch.manual_seed` on the CPU and the tokenizer has a
fixed vocabulary. This module imports torch: only the worker process and the CLI load it.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKLWan,
    UniPCMultistepScheduler,
    WanPipeline,
    WanTransformer3DModel,
)
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel
from transformers.utils import logging as hf_logging

__all__ = [
    "DEFAULT_FFN_DIM",
    "FFN_BYTES_PER_UNIT",
    "TINY_WAN_NAME",
    "TinyWanBuild",
    "build_tiny_wan",
    "directory_digest",
    "is_complete",
]

TINY_WAN_NAME = "tiny-wan"
DEFAULT_SEED = 0
TEXT_DIM = 32
DEFAULT_FFN_DIM = 32
DEFAULT_LAYERS = 2
INNER_DIM = 2 * 12  # attention heads x head dim
# Bytes of float32 weights per unit of the transformer's feed-forward width: two layers, each
# with an in and an out projection of inner dim 24 (2 heads x 12), plus the in-projection bias.
FFN_BYTES_PER_UNIT = 2 * (24 * 2 + 1) * 4
# Files whose presence means a finished build (written last by save_pretrained, then renamed).
_REQUIRED = (
    "model_index.json",
    "transformer/config.json",
    "vae/config.json",
    "text_encoder/config.json",
    "tokenizer/tokenizer.json",
    "scheduler/scheduler_config.json",
)
_SPECIALS = ("<pad>", "</s>", "<unk>")


@dataclass(frozen=True, slots=True)
class TinyWanBuild:
    path: Path
    size_bytes: int
    digest: str


def _tokenizer() -> PreTrainedTokenizerFast:
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(_SPECIALS)}
    for symbol in sorted(alphabet):
        vocab[symbol] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    # T5-style: each sequence ends with </s>.
    core.post_processor = processors.TemplateProcessing(
        single="$A </s>", special_tokens=[("</s>", vocab["</s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=512,
    )


def _text_encoder(vocab_size: int) -> UMT5EncoderModel:
    config = UMT5Config(
        vocab_size=vocab_size,
        d_model=TEXT_DIM,
        d_kv=8,
        d_ff=32,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return UMT5EncoderModel(config).eval()


def _vae() -> Any:
    return AutoencoderKLWan(
        base_dim=3,
        z_dim=16,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
    ).eval()


def tiny_transformer(
    ffn_dim: int = DEFAULT_FFN_DIM,
    num_layers: int = DEFAULT_LAYERS,
    *,
    in_channels: int = 16,
    out_channels: int = 16,
    image_dim: int | None = None,
) -> Any:
    """The tiny denoiser of every variant: 16 latent channels in (36 for image-to-video: noise,
    image latents and mask), cross-attending to image tokens when `image_dim` is given."""
    return WanTransformer3DModel(
        patch_size=(1, 2, 2),
        num_attention_heads=2,
        attention_head_dim=12,
        in_channels=in_channels,
        out_channels=out_channels,
        text_dim=TEXT_DIM,
        freq_dim=256,
        ffn_dim=ffn_dim,
        num_layers=num_layers,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        image_dim=image_dim,
        added_kv_proj_dim=INNER_DIM if image_dim is not None else None,
        rope_max_seq_len=1024,
    ).eval()


def make_pipeline(
    seed: int = DEFAULT_SEED, ffn_dim: int = DEFAULT_FFN_DIM, num_layers: int = DEFAULT_LAYERS
) -> Any:
    # diffusers is only partly typed: its objects are handled as Any here.
    """The tiny pipeline in memory, float32 on the CPU. A wide `ffn_dim` makes the same
    architecture heavy (1,250,000: ~490 MB of weights) without making a job slow: the number of
    tokens stays tiny, so only loading pays for the size. More `num_layers` split the same
    weights into more blocks, as a real Wan transformer's (30 to 40): what offloading streams."""
    tokenizer = _tokenizer()
    torch.manual_seed(seed)
    text_encoder = _text_encoder(len(tokenizer))
    torch.manual_seed(seed)
    vae = _vae()
    torch.manual_seed(seed)
    transformer = tiny_transformer(ffn_dim, num_layers)
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0
    )
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        transformer=transformer,
        vae=vae,
        scheduler=scheduler,
    )


def is_complete(path: Path) -> bool:
    return all((path / name).is_file() for name in _REQUIRED)


def directory_digest(path: Path) -> str:
    """sha256 over every file's relative path and bytes, in sorted order."""
    total = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        total.update(file.relative_to(path).as_posix().encode())
        total.update(hashlib.sha256(file.read_bytes()).digest())
    return total.hexdigest()


def build_tiny_wan(
    out: Path,
    *,
    seed: int = DEFAULT_SEED,
    overwrite: bool = False,
    ffn_dim: int = DEFAULT_FFN_DIM,
    num_layers: int = DEFAULT_LAYERS,
) -> TinyWanBuild:
    """Build into a temporary sibling directory and rename it into place, so `out` is either
    absent or complete — a crashed build never leaves a half model that looks loadable."""
    out = out.resolve()
    if out.exists() and not overwrite and is_complete(out):
        return _describe(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        pipe = make_pipeline(seed, ffn_dim, num_layers)
        # A build says one line when it is done; transformers' "Writing model shards" bar
        # would otherwise reach the person's terminal.
        hf_logging.disable_progress_bar()
        pipe.save_pretrained(staging, safe_serialization=True)
        staging.chmod(0o755)  # mkdtemp creates 0700; the store is a normal directory
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return _describe(out)


def _describe(path: Path) -> TinyWanBuild:
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return TinyWanBuild(path=path, size_bytes=size, digest=directory_digest(path))
