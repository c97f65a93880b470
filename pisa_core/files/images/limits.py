"""The largest image a file may declare, checked from its header before any pixel is decoded.

A small file can declare a huge image (a decompression bomb: a flat WebP or PNG of 60000²
pixels is a few hundred bytes), and decoding it would take gigabytes. Every reader checks the
declared width × height against MAX_IMAGE_PIXELS first. The default is the largest output any
upscale can write (options.MAX_OUTPUT_PIXELS, 64 MP): a bigger input cannot be processed anyway.
Reading takes at most about 4 bytes per sample (float32) plus the decoder's buffer, so 1 GiB for
a 64 MP RGBA image. Raise it with the environment variable PISA_SR_MAX_IMAGE_PIXELS (for example
to read large training images); formats Pillow decodes keep Pillow's own ceiling
(2 × Image.MAX_IMAGE_PIXELS, 179 MP), reported the same way.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from PIL import Image

from ...errors import PiSAError
from ...options import MAX_OUTPUT_PIXELS

LIMIT_VARIABLE = "PISA_SR_MAX_IMAGE_PIXELS"


def max_image_pixels() -> int:
    """The pixel limit in force: PISA_SR_MAX_IMAGE_PIXELS if set (a positive integer), else
    MAX_OUTPUT_PIXELS. Read at each call, so a change of the variable applies at once."""
    text = os.environ.get(LIMIT_VARIABLE, "").strip()
    if not text:
        return MAX_OUTPUT_PIXELS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise PiSAError(f"{LIMIT_VARIABLE}={text!r} is not a positive whole number of pixels.")
    return value


def _megapixels(pixels: int) -> str:
    return f"{pixels / 2**20:.1f} MP"


def check_declared_size(path: Path, width: int, height: int) -> None:
    """PiSAError naming the file when its header declares no pixels or more than the limit."""
    if width < 1 or height < 1:
        raise PiSAError(f"Image {str(path)!r} declares a size of {width}x{height} pixels; expected at least 1x1.")
    limit = max_image_pixels()
    if width * height > limit:
        raise PiSAError(f"Image {str(path)!r} declares {width}x{height} pixels ({_megapixels(width * height)}), "
                        f"above the {_megapixels(limit)} limit; set {LIMIT_VARIABLE} to read larger images.")


def open_pillow(source, path: Path) -> Image.Image:
    """Image.open (the header only) under our limit instead of Pillow's: Pillow's decompression-bomb
    check warns above its limit and raises at twice it; its warning gives way to our check (the
    caller's), its error becomes a PiSAError naming the file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(source)
        except Image.DecompressionBombError as exc:
            raise PiSAError(f"Image {str(path)!r} declares more pixels than Pillow decodes ({exc}); "
                            f"the limit here is {_megapixels(max_image_pixels())} ({LIMIT_VARIABLE}).") from None


def open_checked(source, path: Path) -> Image.Image:
    """open_pillow with the declared size checked against the limit."""
    im = open_pillow(source, path)
    try:
        check_declared_size(path, *im.size)
    except PiSAError:
        im.close()
        raise
    return im
