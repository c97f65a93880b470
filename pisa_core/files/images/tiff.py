"""TIFF: the page count, the 16-bit colour/alpha reader and the baseline writer.

Pillow reads 8-bit TIFFs and 16-bit gray ones, but reduces 16-bit colour/alpha TIFFs to 8 bit
(or cannot open them) and cannot write them. Such files are decoded here by describing the same
strips or tiles to Pillow as a gray 16-bit image (`_read_tiff16`), and TIFFs are written by the
small baseline writer (`_write_tiff`).
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, TiffImagePlugin

from ...errors import PiSAError
from .info import _MAX_16, _TRANSPOSED, ImageInfo, _info_for, orient_tensor
from .limits import check_declared_size, open_pillow

_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*")

_STRIP_BYTES = 1 << 20  # raw bytes per strip of the TIFFs we write


class _Tag:
    """TIFF 6.0 tag numbers used here."""

    WIDTH, HEIGHT, BITS, COMPRESSION, PHOTOMETRIC = 256, 257, 258, 259, 262
    STRIP_OFFSETS, ORIENTATION, SAMPLES, ROWS_PER_STRIP, STRIP_COUNTS = 273, 274, 277, 278, 279
    PLANAR, PREDICTOR, TILE_WIDTH, TILE_LENGTH, TILE_OFFSETS, TILE_COUNTS = 284, 317, 322, 323, 324, 325
    EXTRA_SAMPLES, SAMPLE_FORMAT = 338, 339
    NEW_SUBFILE_TYPE, ICC_PROFILE = 254, 34675


def _tiff_pages(path: Path) -> int:
    """The full-resolution images of a TIFF file (0 when it is not a TIFF): directories whose
    NewSubfileType does not mark a reduced-resolution copy (a thumbnail, which is not counted).
    MPO files (phone JPEGs) hold a preview as their second frame and are not counted either."""
    pages, seen = 0, set()
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8 or head[:4] not in _TIFF_SIGNATURES:
            return 0  # not a TIFF, or one without its first directory's offset: the reader reports it
        ifd = TiffImagePlugin.ImageFileDirectory_v2(head)
        offset = ifd.next
        while offset and offset not in seen and len(seen) < 1024:
            seen.add(offset)
            try:
                f.seek(offset)
                ifd = TiffImagePlugin.ImageFileDirectory_v2(head)
                ifd.load(f)
            except (OSError, SyntaxError, ValueError, KeyError, struct.error):
                break  # a broken directory chain: the reader reports what it cannot decode
            kind = _tag(ifd, _Tag.NEW_SUBFILE_TYPE, 0)[0]
            pages += not (isinstance(kind, int) and kind & 1)
            offset = ifd.next
    return pages


@dataclass(frozen=True)
class _Tiff16:
    """The first image of a TIFF with 16-bit samples and two to four samples per pixel."""

    ifd: TiffImagePlugin.ImageFileDirectory_v2
    width: int
    height: int
    samples: int
    planar: bool       # PlanarConfiguration 2: one plane per sample
    tiled: bool
    predictor: bool    # horizontal differencing (Predictor 2)
    extra: int         # ExtraSamples of the last sample: 0 unspecified (dropped), 1 premultiplied alpha, 2 alpha
    orientation: int

    @property
    def channels(self) -> int:
        return self.samples - 1 if self.samples in (2, 4) and self.extra == 0 else self.samples

    @property
    def info(self) -> ImageInfo:
        return _info_for(self.channels, 16, {1: "L;16", 2: "LA;16", 3: "RGB;16", 4: "RGBA;16"}[self.channels])

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) after the orientation."""
        return (self.width, self.height) if self.orientation in _TRANSPOSED else (self.height, self.width)


def _tag(ifd, tag: int, default=None) -> tuple:
    value = ifd.get(tag, default)
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _ints(ifd, tag: int, path: Path, default=None) -> tuple[int, ...]:
    """A tag's values, checked to be what a TIFF 6.0 layout tag holds: one or more whole numbers
    that fit a LONG (a damaged file can give text, fractions, negative or missing values)."""
    values = _tag(ifd, tag, default)
    if not values or not all(isinstance(v, int) and 0 <= v < 2**32 for v in values):
        raise PiSAError(f"Image {str(path)!r} has a malformed TIFF tag {tag} ({str(values)[:40]}); "
                        "expected whole numbers.")
    return values


_LAYOUT_TAGS = (_Tag.WIDTH, _Tag.HEIGHT, _Tag.BITS, _Tag.COMPRESSION, _Tag.PHOTOMETRIC, _Tag.STRIP_OFFSETS,
                _Tag.SAMPLES, _Tag.ROWS_PER_STRIP, _Tag.STRIP_COUNTS, _Tag.PLANAR, _Tag.PREDICTOR, _Tag.TILE_WIDTH,
                _Tag.TILE_LENGTH, _Tag.TILE_OFFSETS, _Tag.TILE_COUNTS)


def check_layout_tags(ifd, path: Path) -> None:
    """PiSAError naming the file when a tag that lays out the pixel data is not whole numbers:
    Pillow takes them as they come and fails deep inside its decoder (a TypeError on a fraction)."""
    for tag in _LAYOUT_TAGS:
        if tag in ifd:
            _ints(ifd, tag, path)


def _tiff16(path: Path) -> _Tiff16 | None:
    """The layout of a 16-bit TIFF with 2..4 samples per pixel (the ones Pillow reduces to 8 bit or
    cannot open); None for every other file. Unsupported variants are refused by name."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8 or head[:4] not in _TIFF_SIGNATURES:
            return None
        try:
            ifd = TiffImagePlugin.ImageFileDirectory_v2(head)
            f.seek(ifd.next)
            ifd.load(f)
        except (OSError, SyntaxError, ValueError, KeyError, struct.error):
            return None  # broken directory: Pillow's own reader reports it
    samples = _tag(ifd, _Tag.SAMPLES, 1)[0]
    if not isinstance(samples, int) or samples < 2 or any(bits != 16 for bits in _tag(ifd, _Tag.BITS, 1)):
        return None  # not a 16-bit colour/alpha TIFF (or a damaged one): Pillow reads or reports it
    name = str(path)
    photometric = _ints(ifd, _Tag.PHOTOMETRIC, path)[0]
    if (photometric, samples) not in ((1, 2), (2, 3), (2, 4)):
        raise PiSAError(f"Image {name!r} is a 16-bit TIFF with {samples} samples per pixel and photometric "
                        f"interpretation {photometric}; expected gray + alpha, RGB or RGBA.")
    if any(kind != 1 for kind in _tag(ifd, _Tag.SAMPLE_FORMAT, 1)):
        raise PiSAError(f"Image {name!r} has signed or floating-point 16-bit samples; expected unsigned integers.")
    predictor = _ints(ifd, _Tag.PREDICTOR, path, 1)[0]
    if predictor not in (1, 2):
        raise PiSAError(f"Image {name!r} uses TIFF predictor {predictor}; expected none or horizontal "
                        "differencing (2).")
    extra = _ints(ifd, _Tag.EXTRA_SAMPLES, path, 2)[0]  # without the tag, as Pillow: alpha
    width, height = _ints(ifd, _Tag.WIDTH, path)[0], _ints(ifd, _Tag.HEIGHT, path)[0]
    check_declared_size(path, width, height)
    tiff = _Tiff16(ifd=ifd, width=width, height=height, samples=samples,
                   planar=_ints(ifd, _Tag.PLANAR, path, 1)[0] == 2, tiled=_Tag.TILE_OFFSETS in ifd,
                   predictor=predictor == 2, extra=extra, orientation=_ints(ifd, _Tag.ORIENTATION, path, 1)[0])
    _check_segments(path, tiff)
    return tiff


def _segments(path: Path, tiff: _Tiff16) -> tuple[tuple[int, ...], tuple[int, ...], int, int]:
    """(offsets, byte counts, segment width, segment height) of the strips or tiles; PiSAError
    when a size is 0 or the counts do not match the image (TIFF 6.0, sections 3 and 15)."""
    ifd = tiff.ifd
    if tiff.tiled:
        offsets, counts = _ints(ifd, _Tag.TILE_OFFSETS, path), _ints(ifd, _Tag.TILE_COUNTS, path)
        return offsets, counts, _ints(ifd, _Tag.TILE_WIDTH, path)[0], _ints(ifd, _Tag.TILE_LENGTH, path)[0]
    offsets, counts = _ints(ifd, _Tag.STRIP_OFFSETS, path), _ints(ifd, _Tag.STRIP_COUNTS, path)
    return offsets, counts, tiff.width, min(_ints(ifd, _Tag.ROWS_PER_STRIP, path, tiff.height)[0], tiff.height)


def _check_segments(path: Path, tiff: _Tiff16) -> None:
    offsets, counts, width, height = _segments(path, tiff)
    if width < 1 or height < 1:
        raise PiSAError(f"Image {str(path)!r} is a TIFF with {'tiles' if tiff.tiled else 'strips'} of "
                        f"{width}x{height} pixels; expected at least 1x1.")
    if tiff.tiled and (width % 16 or height % 16):
        raise PiSAError(f"Image {str(path)!r} is a TIFF with {width}x{height} tiles; TIFF 6.0 tiles are "
                        "multiples of 16 pixels.")
    across = -(-tiff.width // width)
    expected = across * -(-tiff.height // height) * (tiff.samples if tiff.planar else 1)
    if len(offsets) != expected or len(counts) != expected:
        raise PiSAError(f"Image {str(path)!r} is a TIFF of {tiff.width}x{tiff.height} pixels with "
                        f"{len(offsets)} {'tile' if tiff.tiled else 'strip'} offsets and {len(counts)} byte counts; "
                        f"expected {expected} of each.")


def _tiff_ifd(entries: dict[int, tuple[str, list[int]]], order: str, at: int) -> bytes:
    """One TIFF directory placed at byte `at` of its file, no next directory. entries: tag ->
    (struct code "B" UNDEFINED, "H" SHORT or "I" LONG, values); values longer than 4 bytes follow
    the directory."""
    types = {"B": 7, "H": 3, "I": 4}  # UNDEFINED bytes, SHORT, LONG
    extra_at = at + 2 + 12 * len(entries) + 4
    table, extra = [], b""
    for tag in sorted(entries):
        code, values = entries[tag]
        data = struct.pack(f"{order}{len(values)}{code}", *values)
        if len(data) <= 4:
            value = data.ljust(4, b"\x00")
        else:
            value = struct.pack(order + "I", extra_at + len(extra))
            extra += data + b"\x00" * (len(data) % 2)
        table.append(struct.pack(order + "HHI", tag, types[code], len(values)) + value)
    return struct.pack(order + "H", len(entries)) + b"".join(table) + struct.pack(order + "I", 0) + extra


def _read_tiff16(path: Path, tiff: _Tiff16) -> tuple[torch.Tensor, ImageInfo]:
    """Decode with Pillow (which handles the compressions through libtiff) by describing the same
    strips or tiles as a gray 16-bit image: with interleaved samples, a row of W pixels of S
    samples is a row of W·S gray samples; with planar samples, each plane is a gray image. The
    description is a new directory appended to a copy of the file. Predictor 2 differences each
    sample with the same sample of the previous pixel, which the gray view would get wrong, so it
    is undone here."""
    ifd = tiff.ifd
    order = "<" if ifd.prefix == b"II" else ">"
    per_row = 1 if tiff.planar else tiff.samples
    planes = tiff.samples if tiff.planar else 1
    offsets, counts, segment, rows = _segments(path, tiff)
    compression = _ints(ifd, _Tag.COMPRESSION, path, 1)[0]
    if compression > 0xFFFF:  # a SHORT (TIFF 6.0, section 3)
        raise PiSAError(f"Image {str(path)!r} has an unknown TIFF compression {compression}.")
    data = path.read_bytes()
    at = len(data) + len(data) % 2
    share = len(offsets) // planes
    result = []
    for plane in range(planes):
        part = slice(plane * share, (plane + 1) * share)
        entries = {_Tag.WIDTH: ("I", [tiff.width * per_row]), _Tag.HEIGHT: ("I", [tiff.height]),
                   _Tag.BITS: ("H", [16]), _Tag.COMPRESSION: ("H", [compression]),
                   _Tag.PHOTOMETRIC: ("H", [1]), _Tag.SAMPLES: ("H", [1]), _Tag.PLANAR: ("H", [1])}
        if tiff.tiled:
            entries.update({_Tag.TILE_WIDTH: ("I", [segment * per_row]),
                            _Tag.TILE_LENGTH: ("I", [rows]),
                            _Tag.TILE_OFFSETS: ("I", list(offsets[part])), _Tag.TILE_COUNTS: ("I", list(counts[part]))})
        else:
            entries.update({_Tag.ROWS_PER_STRIP: ("I", [rows]),
                            _Tag.STRIP_OFFSETS: ("I", list(offsets[part])),
                            _Tag.STRIP_COUNTS: ("I", list(counts[part]))})
        view = data[:4] + struct.pack(order + "I", at) + data[8:] + b"\x00" * (at - len(data))
        view += _tiff_ifd(entries, order, at)
        # the real size passed check_declared_size; Pillow's own bomb check sees per_row× the pixels
        try:
            with open_pillow(io.BytesIO(view), path) as im:
                gray = np.asarray(im).astype(np.uint16)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise PiSAError(f"Cannot decode 16-bit TIFF {str(path)!r}: {exc}.") from exc
        pixels = gray.reshape(tiff.height, tiff.width, per_row)
        if tiff.predictor:
            for x in range(0, tiff.width, segment):  # the differencing restarts at each tile's left edge
                np.cumsum(pixels[:, x:x + segment], axis=1, dtype=np.uint16, out=pixels[:, x:x + segment])
        result.append(pixels)
    levels = np.concatenate(result, axis=2) if planes > 1 else result[0]
    image = torch.from_numpy(levels[..., :tiff.channels].astype(np.float32) / np.float32(_MAX_16))
    if tiff.channels in (2, 4) and tiff.extra == 1:  # associated alpha: colour was stored multiplied by it
        alpha = image[..., -1:]
        image[..., :-1] = torch.where(alpha > 0, image[..., :-1] / alpha.clamp_min(1e-12), 0.0).clamp_(0, 1)
    return orient_tensor(image, tiff.orientation).contiguous(), tiff.info


def _write_tiff(f, levels: np.ndarray, icc_profile: bytes | None = None) -> None:
    """A baseline little-endian TIFF: 8- or 16-bit samples, interleaved, in strips of about 1 MiB,
    Adobe deflate with horizontal differencing (what libtiff, Pillow and image editors all read).
    Gray is photometric 1, colour 2; a last alpha channel is unassociated alpha; an ICC profile
    is the InterColorProfile tag (TIFF/EP, ICC.1:2010 Annex B.4)."""
    height, width, channels = levels.shape
    order = "<"
    samples = levels.astype(levels.dtype.newbyteorder(order))
    diff = samples.copy()
    diff[:, 1:] -= samples[:, :-1]  # Predictor 2, modulo 2**bits like the decoder's sum
    rows = max(1, _STRIP_BYTES // (width * channels * levels.itemsize))
    strips = [zlib.compress(diff[y:y + rows].tobytes()) for y in range(0, height, rows)]
    offsets, at = [], 8
    for strip in strips:
        offsets.append(at)
        at += len(strip)
    at += at % 2
    entries = {_Tag.WIDTH: ("I", [width]), _Tag.HEIGHT: ("I", [height]),
               _Tag.BITS: ("H", [8 * levels.itemsize] * channels), _Tag.COMPRESSION: ("H", [8]),
               _Tag.PHOTOMETRIC: ("H", [1 if channels <= 2 else 2]), _Tag.STRIP_OFFSETS: ("I", offsets),
               _Tag.SAMPLES: ("H", [channels]), _Tag.ROWS_PER_STRIP: ("I", [rows]),
               _Tag.STRIP_COUNTS: ("I", [len(strip) for strip in strips]), _Tag.PLANAR: ("H", [1]),
               _Tag.PREDICTOR: ("H", [2]), _Tag.SAMPLE_FORMAT: ("H", [1] * channels)}
    if channels in (2, 4):
        entries[_Tag.EXTRA_SAMPLES] = ("H", [2])
    if icc_profile is not None:
        entries[_Tag.ICC_PROFILE] = ("B", list(icc_profile))
    f.write(b"II*\x00" + struct.pack(order + "I", at))
    for strip in strips:
        f.write(strip)
    f.write(b"\x00" * (at - offsets[-1] - len(strips[-1])))
    f.write(_tiff_ifd(entries, order, at))


