"""What read_image reports about a file (ImageInfo) and the EXIF orientation every reader applies."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

_ORIENTATION_TAG = 0x0112

_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height

_MAX_16 = 65535

_MAX_8 = 255


@dataclass
class ImageInfo:
    """What the source file held, so the output can be written the same way.

    mode: Pillow's mode for the file ("RGB", "RGBA", "L", "LA", "P", "I;16", ...); 16-bit PNGs
    read through pypng report "L;16", "LA;16", "RGB;16" or "RGBA;16".
    icc_profile: the embedded ICC profile the colours were converted from (read_image) and that
    write_image(icc_profile=...) converts back to; None for a file without a (usable) profile,
    whose colours are taken as sRGB; littleCMS's sRGB profile (icc.srgb_profile) when the
    profile was converted by ImageCms and cannot be written back.
    """

    mode: str
    bit_depth: int  # 8 or 16
    channels: int  # 1..4, the C of the tensor read_image returns
    has_alpha: bool
    gray: bool
    icc_profile: bytes | None = None


def _info_for(channels: int, bit_depth: int, mode: str) -> ImageInfo:
    return ImageInfo(mode=mode, bit_depth=bit_depth, channels=channels,
                     has_alpha=channels in (2, 4), gray=channels in (1, 2))


def _exif_orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
    except (OSError, ValueError, SyntaxError):
        return 1  # unreadable EXIF: treat as upright, like a file without EXIF
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def orient_tensor(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """Apply an EXIF orientation (1..8) to [H, W, C], the same way as Pillow's exif_transpose.

    EXIF 2.3 tag 0x0112: 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise,
    7 transverse, 8 rotate 90 counter-clockwise (the transform that makes the image upright).
    """
    if orientation == 2:
        return image.flip(1)
    if orientation == 3:
        return image.flip(0).flip(1)
    if orientation == 4:
        return image.flip(0)
    if orientation == 5:
        return image.transpose(0, 1)
    if orientation == 6:
        return torch.rot90(image, k=-1, dims=(0, 1))
    if orientation == 7:
        return image.transpose(0, 1).flip(0).flip(1)
    if orientation == 8:
        return torch.rot90(image, k=1, dims=(0, 1))
    return image


