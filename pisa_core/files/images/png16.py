"""16-bit PNGs through pypng, which keeps all 16 bits (Pillow reduces colour ones to 8 and cannot
write them)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import png
import torch

from ...errors import PiSAError
from .info import _MAX_16, ImageInfo, _exif_orientation, _info_for, orient_tensor
from .limits import open_pillow

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_header(path) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG file's IHDR chunk, or None if it is not a PNG."""
    with open(path, "rb") as f:
        head = f.read(29)
    if len(head) < 29 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    bit_depth, color_type = struct.unpack(">BB", head[24:26])
    return bit_depth, color_type


def _read_png16(path: Path) -> tuple[torch.Tensor, ImageInfo]:
    """A 16-bit PNG through pypng, keeping all 16 bits (Pillow would reduce colour ones to 8)."""
    try:
        with open(path, "rb") as f:  # pypng leaves a file it opened itself unclosed
            width, height, rows, meta = png.Reader(file=f).read()
            data = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows])
    except (png.Error, OSError, ValueError, zlib.error) as exc:  # pypng passes zlib's errors on
        raise PiSAError(f"Cannot decode 16-bit PNG {str(path)!r}: {exc}.") from exc
    planes = meta["planes"]
    data = data.reshape(height, width, planes)
    transparent = meta.get("transparent")
    if transparent is not None and not meta["alpha"]:
        # tRNS colour key: that one colour is fully transparent, everything else opaque.
        key = np.asarray(transparent, dtype=np.uint16).reshape(1, 1, planes)
        alpha = np.where((data == key).all(axis=2, keepdims=True), 0, _MAX_16).astype(np.uint16)
        data = np.concatenate([data, alpha], axis=2)
    channels = data.shape[2]
    image = torch.from_numpy(data.astype(np.float32) / np.float32(_MAX_16))
    with open_pillow(path, path) as im:  # Pillow still reads the PNG's EXIF (eXIf chunk) for orientation
        image = orient_tensor(image, _exif_orientation(im))
    mode = {1: "L;16", 2: "LA;16", 3: "RGB;16", 4: "RGBA;16"}[channels]
    return image.contiguous(), _info_for(channels, 16, mode)


def _png16_channels(path: Path) -> int:
    """Channels of a 16-bit PNG as _read_png16 returns them (a tRNS colour key adds alpha), from
    the chunks before the pixel data."""
    try:
        with open(path, "rb") as f:
            reader = png.Reader(file=f)
            reader.preamble()
    except (png.Error, OSError, ValueError) as exc:
        raise PiSAError(f"Cannot read 16-bit PNG {str(path)!r}: {exc}.") from exc
    return reader.planes + (1 if reader.trns is not None and not reader.alpha else 0)


class _PngWriter(png.Writer):
    """pypng's writer plus ancillary chunks after its preamble (IHDR and friends), before IDAT:
    pypng has no option for text chunks."""

    def __init__(self, *args, chunks: list[tuple[bytes, bytes]], **kwargs):
        super().__init__(*args, **kwargs)
        self.chunks = chunks

    def write_preamble(self, outfile) -> None:
        super().write_preamble(outfile)
        for kind, data in self.chunks:
            png.write_chunk(outfile, kind, data)


def _write_png16(f, levels: np.ndarray, chunks: list[tuple[bytes, bytes]]) -> None:
    height, width, channels = levels.shape
    writer = _PngWriter(width, height, greyscale=channels in (1, 2), alpha=channels in (2, 4),
                        bitdepth=16, chunks=chunks)
    writer.write_array(f, levels.reshape(-1))


