"""What an uploaded image must be before it is stored: checked by its content, not its name.

PNG, JPEG and WebP only (Pillow identifies the format from the bytes, and is told to try no
other decoder); at most `max_pixels` pixels, checked on the header *before* anything is decoded,
so a decompression bomb (a 30000x30000 PNG of a few KB) costs nothing; then a full decode, so a
truncated or lying file is refused now rather than failing a job later. Pillow only: the control
process never imports torch.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

__all__ = ["FORMATS", "ImageFacts", "ImageRejected", "inspect_image"]

# Invariant: `max_pixels` is checked on every header before a decode. Pillow's own bomb check
# (`Image.MAX_IMAGE_PIXELS`, process-wide) is left as the host process set it: genvisor may be
# embedded in another app, whose images are none of its business. Above twice that limit Pillow
# refuses on open, which `inspect_image` reports as the same refusal.

# Pillow's format name -> the name the API answers.
FORMATS = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}
# EXIF orientations that turn the image a quarter: width and height swap once it is upright.
_QUARTER_TURNS = {5, 6, 7, 8}
_ORIENTATION = 0x0112


class ImageRejected(Exception):
    """The upload is not an image genvisor takes; `message` says why, for a person."""

    def __init__(self, message: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.too_large = too_large


@dataclass(frozen=True, slots=True)
class ImageFacts:
    format: str  # png | jpeg | webp
    width: int  # upright (EXIF orientation applied)
    height: int
    mode: str  # Pillow's mode as stored (RGB, RGBA, P, L, ...): jobs read it as RGB


def inspect_image(data: bytes, *, max_pixels: int) -> ImageFacts:
    if not data:
        raise ImageRejected("the file is empty")
    try:
        with warnings.catch_warnings():
            # Should another module set Pillow's limit back, its warning must not escape here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _open(data) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise _too_many(width, height, max_pixels)
                orientation = image.getexif().get(_ORIENTATION, 1)
                fmt, mode = FORMATS[image.format or ""], image.mode
                image.load()
    except Image.DecompressionBombError as exc:
        raise ImageRejected(
            f"the image declares more pixels than any video frame needs ({exc}); "
            f"at most {max_pixels} (setting max_input_pixels)",
            too_large=True,
        ) from None
    except UnidentifiedImageError:
        raise ImageRejected(
            "not a PNG, JPEG or WebP image (judged by its content, not its name)"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageRejected(f"the image is damaged or cut short ({exc})") from None
    if orientation in _QUARTER_TURNS:
        width, height = height, width
    return ImageFacts(format=fmt, width=width, height=height, mode=mode)


def _open(data: bytes) -> Image.Image:
    """`Image.open` for the three formats, minus Pillow's process-wide bomb check: the size is
    checked against `max_pixels` right after the header is read, and said in words."""
    Image.init()
    for name in FORMATS:
        factory, accept = Image.OPEN[name]
        # An `accept` answers True, False, or a string when the format is known but its codec
        # is missing (Pillow then names it): only True is this format.
        if accept is None or accept(data[:16]) is True:
            return factory(io.BytesIO(data), "")
    raise UnidentifiedImageError("not a PNG, JPEG or WebP image")


def _too_many(width: int, height: int, max_pixels: int) -> ImageRejected:
    return ImageRejected(
        f"{width}x{height} is {width * height} pixels; at most {max_pixels} "
        "(setting max_input_pixels), checked before decoding",
        too_large=True,
    )
