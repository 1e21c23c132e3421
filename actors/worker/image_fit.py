"""Fitting an input image to the video's size, the same way on every attempt.

The size is the job's *current* one: when recovery lowers the resolution, the image is fitted
again to the new size from the stored original, so the first frame always matches the video.
Pillow only (the server validates uploads with the same library, without torch).
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageOps

from supervisor.core.params import Fit

__all__ = ["fit_image", "open_input"]


def open_input(path: Path) -> Image.Image:
    """A stored input as RGB, with its EXIF orientation applied (uploads are stored as sent);
    transparent pixels (alpha, or a palette's transparent index) become black, as padding is."""
    with Image.open(path) as raw:
        upright = ImageOps.exif_transpose(raw)
        if upright.mode in ("RGBA", "LA", "PA") or "transparency" in upright.info:
            rgba = upright.convert("RGBA")
            black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
            return Image.alpha_composite(black, rgba).convert("RGB")
        return upright.convert("RGB")


def fit_image(image: Image.Image, width: int, height: int, fit: Fit) -> Image.Image:
    """`image` at exactly width x height: crop (keep the aspect, cut the centred overflow),
    pad (keep everything, black bars) or stretch."""
    size = (width, height)
    if fit is Fit.STRETCH:
        return image.resize(size, Image.Resampling.LANCZOS)
    if fit is Fit.CROP:
        return ImageOps.fit(image, size, Image.Resampling.LANCZOS, centering=(0.5, 0.5))
    return ImageOps.pad(image, size, Image.Resampling.LANCZOS, color=(0, 0, 0))
