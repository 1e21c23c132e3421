"""Where a job is, or where a failure happened: the one Stage vocabulary of genvisor.

The worker reports the generation stages (`GENERATION_STAGES`) in progress and timings; a failure
may also come from loading, a download, the API, start-up or the worker process itself.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["GENERATION_STAGES", "Stage"]


class Stage(StrEnum):
    LOAD = "load"
    ENCODE = "encode"
    DENOISE = "denoise"
    # An image job's first (and last) frame through the VAE encoder, inside the image pipeline
    # before its first denoising step: a full-size video's worth of VAE memory, as a decode.
    IMAGE_ENCODE = "image_encode"
    DECODE = "decode"
    SAVE = "save"
    DOWNLOAD = "download"
    API = "api"
    STARTUP = "startup"
    WORKER = "worker"
    UNKNOWN = "unknown"


# What one generation walks through, in order, once its pipeline is loaded.
GENERATION_STAGES = (Stage.ENCODE, Stage.DENOISE, Stage.DECODE, Stage.SAVE)
