"""Image files in and out for the CLI: 8/16-bit, gray, alpha, EXIF orientation, ICC colour
profiles, input lists, header checks, region masks, PNG text chunks and safe writes.

Images are tensors [H, W, C] float32 in 0..1 with C = 1 (gray), 2 (gray + alpha), 3 (RGB) or
4 (RGBA). Pillow reads and writes most of it, but it keeps colour samples in 8 bits: it silently
reduces 16-bit colour/alpha PNGs and TIFFs to 8 bit and cannot write them. So 16-bit PNGs go
through pypng, 16-bit colour/alpha TIFFs are decoded by Pillow as a gray 16-bit view of the same
strips (`_read_tiff16`), and TIFFs are written by the small baseline writer here (`_write_tiff`).

Colours are sRGB in memory: an embedded ICC profile is converted to sRGB on reading (icc.py) and
kept in ImageInfo, so write_image can convert back to it and embed it again. Tensors handed to the
pipeline are taken as sRGB.

Writes never leave a partial file under the final name: the bytes go to a hidden temporary file
in the same folder, which is renamed over the target only once it is complete (`atomic_output`).
"""

from __future__ import annotations

import glob
import io
import logging
import os
import stat
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import png
import torch
from PIL import Image, ImageOps, TiffImagePlugin, UnidentifiedImageError
from PIL.PngImagePlugin import PngInfo

from ..atomic import atomic_output, temporary_path
from ..errors import PiSAError
from .icc import (
    Profile,
    ProfileError,
    lcms_to_srgb,
    matrix_from_srgb,
    matrix_to_srgb,
    parse_profile,
    profile_mode,
    srgb_profile,
)

log = logging.getLogger(__name__)

#: Pillow format names we read (MPO is how Pillow opens many phone-camera JPEGs).
READ_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "TIFF", "BMP")
#: File extensions picked up from folders and glob patterns by list_inputs.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
#: Output extensions write_image knows -> format name.
WRITE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF"}
#: Output formats that hold 16-bit samples.
SIXTEEN_BIT_FORMATS = ("PNG", "TIFF")
#: write_image's icc_profile value for "sRGB, tagged as such" (no conversion).
SRGB = "srgb"

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, the weights of Pillow's convert("L")
_TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*")
_GLOB_CHARS = frozenset("*?[")
_ORIENTATION_TAG = 0x0112
_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_MAX_16 = 65535
_MAX_8 = 255
_STRIP_BYTES = 1 << 20  # raw bytes per strip of the TIFFs we write


class _Tag:
    """TIFF 6.0 tag numbers used here."""

    WIDTH, HEIGHT, BITS, COMPRESSION, PHOTOMETRIC = 256, 257, 258, 259, 262
    STRIP_OFFSETS, ORIENTATION, SAMPLES, ROWS_PER_STRIP, STRIP_COUNTS = 273, 274, 277, 278, 279
    PLANAR, PREDICTOR, TILE_WIDTH, TILE_LENGTH, TILE_OFFSETS, TILE_COUNTS = 284, 317, 322, 323, 324, 325
    EXTRA_SAMPLES, SAMPLE_FORMAT = 338, 339
    NEW_SUBFILE_TYPE, ICC_PROFILE = 254, 34675


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


def png_header(path) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG file's IHDR chunk, or None if it is not a PNG."""
    with open(path, "rb") as f:
        head = f.read(29)
    if len(head) < 29 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    bit_depth, color_type = struct.unpack(">BB", head[24:26])
    return bit_depth, color_type


def _info_for(channels: int, bit_depth: int, mode: str) -> ImageInfo:
    return ImageInfo(mode=mode, bit_depth=bit_depth, channels=channels,
                     has_alpha=channels in (2, 4), gray=channels in (1, 2))


def special_file_kind(path: Path) -> str | None:
    """What a path that exists but is no regular file is ("a folder", "a named pipe (FIFO)", ...),
    from its status alone: a FIFO is never opened (opening one blocks until a writer comes).
    None for a regular file or a path that does not exist."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "a broken symbolic link" if os.path.islink(path) else None
    for test, kind in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return None if stat.S_ISREG(mode) else "not a regular file"


def _check_file(path: Path) -> None:
    kind = special_file_kind(path)
    if kind is not None:
        raise PiSAError(f"Image path {str(path)!r} is {kind}, not an image file.")
    if not path.is_file():
        raise PiSAError(f"Image file {str(path)!r} does not exist.")


def _open_pil(path: Path) -> Image.Image:
    """Open with Pillow and check the format and the frame count; PiSAError naming the file on
    any failure."""
    _check_file(path)
    _check_single_frame(path)
    try:
        im = Image.open(path)
    except UnidentifiedImageError as exc:
        raise PiSAError(f"Cannot read {str(path)!r}: not a recognised image file "
                        f"(expected PNG, JPEG, WebP, TIFF or BMP).") from exc
    except (OSError, Image.DecompressionBombError) as exc:
        raise PiSAError(f"Cannot read image {str(path)!r}: {exc}.") from exc
    if im.format not in READ_FORMATS:
        fmt = im.format
        im.close()
        raise PiSAError(f"Image {str(path)!r} is {fmt}; expected PNG, JPEG, WebP, TIFF or BMP.")
    frames = 1 if im.format in ("MPO", "TIFF") else getattr(im, "n_frames", 1)
    if frames > 1:
        im.close()
        _refuse_frames(path, frames)
    return im


def _refuse_frames(path: Path, frames: int) -> None:
    raise PiSAError(f"Image {str(path)!r} has {frames} frames (an animation or a multi-page file); "
                    "PiSA-SR upscales single images: extract the frame you want first.")


def _tiff_pages(path: Path) -> int:
    """The full-resolution images of a TIFF file (0 when it is not a TIFF): directories whose
    NewSubfileType does not mark a reduced-resolution copy (a thumbnail, which is not counted).
    MPO files (phone JPEGs) hold a preview as their second frame and are not counted either."""
    pages, seen = 0, set()
    with open(path, "rb") as f:
        head = f.read(8)
        if head[:4] not in _TIFF_SIGNATURES:
            return 0
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
            pages += not (_tag(ifd, _Tag.NEW_SUBFILE_TYPE, 0)[0] & 1)
            offset = ifd.next
    return pages


def _check_single_frame(path: Path) -> None:
    """Refuse a multi-page TIFF by name and page count (other formats: _open_pil)."""
    pages = _tiff_pages(path)
    if pages > 1:
        _refuse_frames(path, pages)


def _load(im: Image.Image, path: Path, *, orient: bool = True) -> Image.Image:
    """Decode the pixels and, if orient, apply the EXIF orientation (no-op without one)."""
    try:
        im.load()
        return ImageOps.exif_transpose(im) if orient else im
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow's errors for truncated/corrupt data
        raise PiSAError(f"Cannot decode image {str(path)!r}: {exc}.") from exc


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


def _read_png16(path: Path) -> tuple[torch.Tensor, ImageInfo]:
    """A 16-bit PNG through pypng, keeping all 16 bits (Pillow would reduce colour ones to 8)."""
    try:
        with open(path, "rb") as f:  # pypng leaves a file it opened itself unclosed
            width, height, rows, meta = png.Reader(file=f).read()
            data = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows])
    except (png.Error, OSError, ValueError) as exc:
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
    with Image.open(path) as im:  # Pillow still reads the PNG's EXIF (eXIf chunk) for orientation
        image = orient_tensor(image, _exif_orientation(im))
    mode = {1: "L;16", 2: "LA;16", 3: "RGB;16", 4: "RGBA;16"}[channels]
    return image.contiguous(), _info_for(channels, 16, mode)


def _pil_layout(im: Image.Image, path: Path) -> tuple[str | None, int, int]:
    """How a Pillow image is read: (mode to convert to, or None for the 16-bit gray modes; channels;
    bit depth). Judged from the mode alone, so a header check gives the same answer as a read."""
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        return None, 1, 16
    if mode == "F":
        raise PiSAError(f"Image {str(path)!r} has floating-point samples (mode F); "
                        f"expected 8- or 16-bit integer samples.")
    if mode in ("1", "L"):
        target = "L"
    elif mode in ("LA", "La"):
        target = "LA"
    elif mode in ("P", "PA"):
        target = "RGBA" if mode == "PA" or im.has_transparency_data else "RGB"
    elif mode in ("RGBA", "RGBa"):
        target = "RGBA"
    else:  # RGB, RGBX, CMYK, YCbCr, LAB, HSV
        target = "RGB"
    return target, len(target), 8


def _pil_to_array(im: Image.Image, path: Path) -> tuple[np.ndarray, int, int]:
    """Pixels of an oriented Pillow image as (uint array [H, W, C], max value, bit depth)."""
    target, _, bit_depth = _pil_layout(im, path)
    if target is None:
        data = np.asarray(im)
        if im.mode == "I" and data.size and (data.min() < 0 or data.max() > _MAX_16):
            raise PiSAError(f"Image {str(path)!r} has 32-bit integer values outside 0..65535; "
                            f"expected 8- or 16-bit samples.")
        return data.astype(np.uint16)[..., None], _MAX_16, 16
    data = np.asarray(im.convert(target) if im.mode != target else im, dtype=np.uint8)
    if data.ndim == 2:
        data = data[..., None]
    return data, _MAX_8, bit_depth


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


# --- 16-bit colour/alpha TIFF ---------------------------------------------------------------------


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


def _tiff16(path: Path) -> _Tiff16 | None:
    """The layout of a 16-bit TIFF with 2..4 samples per pixel (the ones Pillow reduces to 8 bit or
    cannot open); None for every other file. Unsupported variants are refused by name."""
    with open(path, "rb") as f:
        head = f.read(8)
        if head[:4] not in _TIFF_SIGNATURES:
            return None
        try:
            ifd = TiffImagePlugin.ImageFileDirectory_v2(head)
            f.seek(ifd.next)
            ifd.load(f)
        except (OSError, SyntaxError, ValueError, KeyError, struct.error):
            return None  # broken directory: Pillow's own reader reports it
    samples = _tag(ifd, _Tag.SAMPLES, 1)[0]
    if samples < 2 or any(bits != 16 for bits in _tag(ifd, _Tag.BITS, 1)):
        return None
    name = str(path)
    photometric = _tag(ifd, _Tag.PHOTOMETRIC)[0]
    if (photometric, samples) not in ((1, 2), (2, 3), (2, 4)):
        raise PiSAError(f"Image {name!r} is a 16-bit TIFF with {samples} samples per pixel and photometric "
                        f"interpretation {photometric}; expected gray + alpha, RGB or RGBA.")
    if any(kind != 1 for kind in _tag(ifd, _Tag.SAMPLE_FORMAT, 1)):
        raise PiSAError(f"Image {name!r} has signed or floating-point 16-bit samples; expected unsigned integers.")
    predictor = _tag(ifd, _Tag.PREDICTOR, 1)[0]
    if predictor not in (1, 2):
        raise PiSAError(f"Image {name!r} uses TIFF predictor {predictor}; expected none or horizontal "
                        "differencing (2).")
    extra = _tag(ifd, _Tag.EXTRA_SAMPLES, 2)[0]  # without the tag, as Pillow: alpha
    return _Tiff16(ifd=ifd, width=_tag(ifd, _Tag.WIDTH)[0], height=_tag(ifd, _Tag.HEIGHT)[0], samples=samples,
                   planar=_tag(ifd, _Tag.PLANAR, 1)[0] == 2, tiled=_Tag.TILE_OFFSETS in ifd,
                   predictor=predictor == 2, extra=extra,
                   orientation=_tag(ifd, _Tag.ORIENTATION, 1)[0])


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
    if tiff.tiled:
        offsets, counts = _tag(ifd, _Tag.TILE_OFFSETS), _tag(ifd, _Tag.TILE_COUNTS)
        segment = _tag(ifd, _Tag.TILE_WIDTH)[0]
    else:
        offsets, counts = _tag(ifd, _Tag.STRIP_OFFSETS), _tag(ifd, _Tag.STRIP_COUNTS)
        segment = tiff.width
    data = path.read_bytes()
    at = len(data) + len(data) % 2
    share = len(offsets) // planes
    result = []
    for plane in range(planes):
        part = slice(plane * share, (plane + 1) * share)
        entries = {_Tag.WIDTH: ("I", [tiff.width * per_row]), _Tag.HEIGHT: ("I", [tiff.height]),
                   _Tag.BITS: ("H", [16]), _Tag.COMPRESSION: ("H", [_tag(ifd, _Tag.COMPRESSION, 1)[0]]),
                   _Tag.PHOTOMETRIC: ("H", [1]), _Tag.SAMPLES: ("H", [1]), _Tag.PLANAR: ("H", [1])}
        if tiff.tiled:
            entries.update({_Tag.TILE_WIDTH: ("I", [segment * per_row]),
                            _Tag.TILE_LENGTH: ("I", [_tag(ifd, _Tag.TILE_LENGTH)[0]]),
                            _Tag.TILE_OFFSETS: ("I", list(offsets[part])), _Tag.TILE_COUNTS: ("I", list(counts[part]))})
        else:
            entries.update({_Tag.ROWS_PER_STRIP: ("I", [_tag(ifd, _Tag.ROWS_PER_STRIP, tiff.height)[0]]),
                            _Tag.STRIP_OFFSETS: ("I", list(offsets[part])),
                            _Tag.STRIP_COUNTS: ("I", list(counts[part]))})
        view = data[:4] + struct.pack(order + "I", at) + data[8:] + b"\x00" * (at - len(data))
        view += _tiff_ifd(entries, order, at)
        # Pillow's decompression-bomb check sees per_row× the pixels; it only refuses inputs far
        # larger than any upscale would take (the output limit), with its own message
        try:
            with Image.open(io.BytesIO(view)) as im:
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


def read_image(path, *, convert_profile: bool = True) -> tuple[torch.Tensor, ImageInfo]:
    """Read an image file as ([H, W, C] float32 in 0..1, ImageInfo), EXIF orientation applied,
    colours in sRGB.

    PNG, JPEG, WebP, TIFF, BMP. C is 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA); palette
    images become RGB, or RGBA when they carry transparency. 16-bit samples (PNG, TIFF) are
    divided by 65535, 8-bit ones by 255. An embedded ICC profile is converted to sRGB (a matrix
    profile in float, keeping 16 bits, and kept in info.icc_profile for write_image; another one
    through ImageCms at 8 bits), colours outside sRGB clipped; convert_profile=False reads the
    stored values as they are (masks: their levels are data, not colours). Files with several
    frames (an animation, a multi-page TIFF) are refused, naming the frame count.
    """
    path = Path(path)
    _check_file(path)
    _check_single_frame(path)

    def profile_of(data) -> Profile | None:
        return _embedded_profile(path, data) if convert_profile else None

    tiff = _tiff16(path)
    if tiff is not None:
        image, info = _read_tiff16(path, tiff)
        return _to_srgb(image, info, profile_of(tiff.ifd.get(_Tag.ICC_PROFILE)), path)
    header = png_header(path)
    if header is not None and header[0] == 16:
        with _open_pil(path) as im:  # same format check and errors as every other file
            icc = im.info.get("icc_profile")
        image, info = _read_png16(path)
        return _to_srgb(image, info, profile_of(icc), path)
    with _open_pil(path) as im:
        source_mode = im.mode
        profile = profile_of(im.info.get("icc_profile"))
        oriented = _load(im, path)
        converted = None
        if profile is not None and profile.matrix is None:
            converted, profile = _lcms_to_srgb(oriented, profile, path), None
        data, max_value, bit_depth = _pil_to_array(oriented if converted is None else converted, path)
    image = torch.from_numpy(data.astype(np.float32) / np.float32(max_value))
    info = _info_for(data.shape[2], bit_depth, source_mode)
    if converted is not None:
        info.icc_profile = srgb_profile()  # the output is tagged as sRGB
        return image.contiguous(), info
    return _to_srgb(image.contiguous(), info, profile, path)


# --- ICC colour profiles --------------------------------------------------------------------------


def _embedded_profile(path: Path, data) -> Profile | None:
    """The parsed profile, or None without one; a profile that cannot be parsed is reported and
    ignored (the colours are read as sRGB, as by viewers that do not manage colour)."""
    if not data:
        return None
    try:
        return parse_profile(bytes(data))
    except ProfileError as exc:
        log.warning("pisa-sr: %s: its embedded ICC profile is ignored (%s); its colours are read as sRGB", path, exc)
        return None


def _ignore_profile(path: Path, profile: Profile, why: str) -> None:
    log.warning("pisa-sr: %s: its ICC profile %r is ignored (%s); its colours are read as sRGB", path,
                profile.description, why)


def _to_srgb(image: torch.Tensor, info: ImageInfo, profile: Profile | None,
             path: Path) -> tuple[torch.Tensor, ImageInfo]:
    """The colour channels from a matrix profile to sRGB, in float (16 bits stay 16 bits); the
    profile goes into info.icc_profile for the output."""
    if profile is None:
        return image, info
    if profile.data == srgb_profile():  # what write_image tags sRGB with: nothing to convert
        info.icc_profile = profile.data
        return image, info
    if profile.matrix is None:
        _refuse_16bit_table(path, profile)
    colour = 1 if info.gray else 3
    if profile.matrix.channels != colour:
        _ignore_profile(path, profile, f"a {profile.space} profile on a {'gray' if info.gray else 'colour'} image")
        return image, info
    image = image.clone()
    image[..., :colour] = matrix_to_srgb(image[..., :colour], profile.matrix)
    info.icc_profile = profile.data
    return image, info


def _refuse_16bit_table(path: Path, profile: Profile) -> None:
    raise PiSAError(f"Image {str(path)!r} has 16-bit samples and a table-based ICC profile "
                    f"({profile.description!r}), which is converted at 8 bits only; convert it to sRGB or "
                    "to 8 bits first.")


def _lcms_to_srgb(im: Image.Image, profile: Profile, path: Path) -> Image.Image | None:
    """An 8-bit image with a table-based, CMYK or Lab profile -> sRGB through ImageCms (its
    output is written as sRGB: the profile is not written back); None when the profile does not
    fit the image (reported, ignored). 16-bit gray is refused by name."""
    if im.mode.startswith("I") or im.mode == "F":
        _refuse_16bit_table(path, profile)
    rgb_modes = ("RGB", "RGBA", "RGBX", "RGBa", "P", "PA")
    if profile.space == "GRAY" or not (im.mode == profile_mode(profile) or
                                       (profile_mode(profile) == "RGB" and im.mode in rgb_modes)):
        _ignore_profile(path, profile, f"a {profile.space} table profile on a {im.mode} image")
        return None
    try:
        converted = lcms_to_srgb(im, profile)
    except (OSError, ValueError) as exc:  # ImageCms.PyCMSError is an OSError
        raise PiSAError(f"Cannot convert the colours of {str(path)!r} from its ICC profile "
                        f"{profile.description!r} to sRGB: {exc}.") from None
    log.info("pisa-sr: %s: converted from its ICC profile %r to sRGB; its output is written as sRGB", path,
             profile.description)
    return converted


def read_mask(path) -> torch.Tensor:
    """A region mask as [H, W] float32 in 0..1, 1 = inside, EXIF orientation applied.

    An image with transparency (gray + alpha, RGBA, a palette with transparency, 8 or 16 bit):
    its alpha, opaque = inside (a subject cut out of its background). Otherwise its brightness:
    white = inside (colour: BT.601 luma, white exactly 1). An alpha channel that is opaque
    everywhere marks no region (editors often save black-and-white drawings as RGBA), so such an
    image is judged by its brightness too. Gray levels are soft masks, taken as stored: an
    embedded colour profile is not applied.
    """
    image, _ = read_image(path, convert_profile=False)
    channels = image.shape[2]
    if channels in (2, 4) and not bool((image[..., -1] == 1).all()):
        return image[..., -1].contiguous()
    if channels in (1, 2):
        return image[..., 0].contiguous()
    colour = image[..., :3].double()
    luma = sum(weight * colour[..., i] for i, weight in enumerate(_LUMA)) / sum(_LUMA)  # white: exactly 1
    return luma.float().contiguous()


def probe_image(path) -> tuple[ImageInfo, tuple[int, int]]:
    """Check that read_image can read `path` from its header only (no pixel data is decoded):
    (the ImageInfo read_image reports, (height, width) after the EXIF orientation). PiSAError
    naming the file otherwise. A file whose pixel data is damaged passes; read_image reports it."""
    path = Path(path)
    _check_file(path)
    _check_single_frame(path)
    tiff = _tiff16(path)
    if tiff is not None:
        return tiff.info, tiff.size
    header = png_header(path)
    with _open_pil(path) as im:
        width, height = im.size
        orientation = _exif_orientation(im)
        if header is not None and header[0] == 16:
            channels = _png16_channels(path)
            info = _info_for(channels, 16, {1: "L;16", 2: "LA;16", 3: "RGB;16", 4: "RGBA;16"}[channels])
        else:
            _, channels, bit_depth = _pil_layout(im, path)
            info = _info_for(channels, bit_depth, im.mode)
    if orientation in _TRANSPOSED:
        width, height = height, width
    return info, (height, width)


def to_pil_8bit(path, *, exif_transpose: bool = True) -> Image.Image:
    """The release's Pillow route: an 8-bit "RGB" image, or "RGBA" when the file has alpha.

    Pillow's own convert() is used, so 8-bit files give exactly what Image.open(p).convert("RGB")
    gives in the release. 16-bit gray, which Pillow's convert() would clip to 255, is scaled to
    8 bit first (round(v / 257)). 16-bit colour PNGs come as Pillow decodes them (8 bit).
    exif_transpose applies the EXIF orientation, as read_image does. An embedded colour profile
    is converted to sRGB as by read_image, then rounded to 8 bits.
    """
    path = Path(path)
    with _open_pil(path) as im:
        profile = _embedded_profile(path, im.info.get("icc_profile"))
        oriented = _load(im, path, orient=exif_transpose)
        if profile is not None and profile.matrix is None:
            converted, profile = _lcms_to_srgb(oriented, profile, path), None
            oriented = oriented if converted is None else converted
        mode = oriented.mode
        if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
            data, _, _ = _pil_to_array(oriented, path)
            levels = np.floor(data[..., 0].astype(np.float32) / np.float32(257) + 0.5)
            oriented = Image.fromarray(levels.astype(np.uint8))
            mode = "L"
        has_alpha = mode in ("LA", "La", "PA", "RGBA", "RGBa") or (
            mode == "P" and oriented.has_transparency_data)
        result = oriented.convert("RGBA" if has_alpha else "RGB")
    if profile is not None:
        result = _srgb_8bit(result, mode in ("1", "L", "LA", "La"), profile, path)
    return result


def _srgb_8bit(im: Image.Image, gray: bool, profile: Profile, path: Path) -> Image.Image:
    """An "RGB"/"RGBA" image (R = G = B when the file is gray) from a matrix profile to sRGB,
    rounded to 8 bits."""
    data = torch.from_numpy(np.asarray(im, dtype=np.float32) / np.float32(_MAX_8))
    colour = 1 if gray else 3
    converted, _ = _to_srgb(data[..., :colour].contiguous(), _info_for(colour, 8, im.mode), profile, path)
    data[..., :3] = converted
    return Image.fromarray(quantize(data.numpy(), 8))  # uint8 [H, W, 3 or 4]: RGB or RGBA


def _check_image(image, path: Path) -> np.ndarray:
    """[H, W, C] float image (C 1..4) -> float32 numpy array, clamped to 0..1."""
    if not isinstance(image, torch.Tensor):
        image = torch.as_tensor(np.asarray(image))
    if image.ndim != 3 or not 1 <= image.shape[2] <= 4 or image.shape[0] < 1 or image.shape[1] < 1:
        raise PiSAError(f"Cannot write {str(path)!r}: expected an image tensor [H, W, C] with "
                        f"C = 1..4, got shape {tuple(image.shape)}.")
    image = image.detach().to("cpu", torch.float32)
    if torch.isnan(image).any():
        raise PiSAError(f"Cannot write {str(path)!r}: the image contains NaN values.")
    return image.clamp(0.0, 1.0).numpy()


def quantize(image: np.ndarray, bit_depth: int) -> np.ndarray:
    """Float 0..1 -> integers by rounding half up: round(x * (2**bits - 1)), not truncation."""
    max_value = _MAX_16 if bit_depth == 16 else _MAX_8
    levels = np.floor(image * np.float32(max_value) + np.float32(0.5))
    return levels.astype(np.uint16 if bit_depth == 16 else np.uint8)


def output_format(path, bit_depth: int = 8, channels: int | None = None) -> str:
    """The format write_image uses for `path` (from its extension), once checked that it holds
    `bit_depth` and `channels` (None: not checked); PiSAError naming the file otherwise. Front ends
    call it before any work, so an impossible output is refused before minutes of computing."""
    path = Path(path)
    fmt = WRITE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise PiSAError(f"Cannot write {str(path)!r}: unknown extension {path.suffix!r}; "
                        f"expected {', '.join(WRITE_FORMATS)}.")
    if bit_depth not in (8, 16):
        raise PiSAError(f"Cannot write {str(path)!r}: bit depth must be 8 or 16, got {bit_depth!r}.")
    if bit_depth == 16 and fmt not in SIXTEEN_BIT_FORMATS:
        raise PiSAError(f"Cannot write {str(path)!r} with 16 bits: {fmt} holds 8 bits; "
                        f"use a .png or .tif file or bit depth 8.")
    if fmt == "JPEG" and channels in (2, 4):
        raise PiSAError(f"Cannot write {str(path)!r}: JPEG has no alpha channel and the image has "
                        f"{channels} channels; drop the alpha or write a .png/.webp/.tif file.")
    return fmt


def write_image(path, image, bit_depth: int = 8, *, quality: int = 95, overwrite: bool = True,
                text: dict[str, str] | None = None, icc_profile: bytes | str | None = None) -> None:
    """Write [H, W, C] float 0..1 (C 1..4) to PNG or TIFF (8 or 16 bit), JPEG or WebP (8 bit).

    Values are clamped to 0..1 and rounded. JPEG has no alpha: C = 2 or 4 to JPEG is refused
    (drop the alpha channel first) rather than flattened onto a guessed background. WebP stores
    gray as RGB. quality applies to JPEG (4:4:4 chroma) and WebP. Parent folders are created.
    The file appears whole or not at all (atomic_output); overwrite=False refuses an existing file.
    text: keyword -> text, written as iTXt chunks (UTF-8) into PNG files, 8 and 16 bit, before the
    pixel data; other formats do not carry it (png_text reads it back).
    icc_profile: the image is sRGB; None writes it untagged (as sRGB is read), SRGB tags it as
    sRGB (colour images: littleCMS's sRGB profile; gray PNGs: the sRGB chunk; other gray files
    stay untagged), and the bytes of a matrix profile (ImageInfo.icc_profile) convert the colours
    from sRGB to that profile, in float, and embed it.
    """
    path = Path(path)
    data = _check_image(image, path)
    fmt = output_format(path, bit_depth, data.shape[2])
    data, embed = _from_srgb(data, icc_profile, fmt, path)
    chunks = [(b"iTXt", _itxt(path, keyword, value)) for keyword, value in (text or {}).items()]
    levels = quantize(data, bit_depth)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PiSAError(f"Cannot write {str(path)!r}: cannot create its folder ({exc.strerror or exc}).") from None
    with atomic_output(path, overwrite=overwrite) as f:
        if fmt == "TIFF":
            _write_tiff(f, levels, embed)
        elif bit_depth == 16:
            _write_png16(f, levels, _png_profile_chunks(embed, data.shape[2], icc_profile) + chunks)
        else:
            _save_pil(f, levels, fmt, quality, _png_profile_chunks(None, data.shape[2], icc_profile) + chunks, embed)


def _from_srgb(data: np.ndarray, icc_profile, fmt: str, path: Path) -> tuple[np.ndarray, bytes | None]:
    """(the samples to write, the profile bytes to embed) for write_image's icc_profile."""
    channels = data.shape[2]
    colour = 1 if channels in (1, 2) else 3
    if icc_profile is None:
        return data, None
    if isinstance(icc_profile, str) or bytes(icc_profile) == srgb_profile():  # sRGB to sRGB: no conversion
        if icc_profile not in (SRGB, srgb_profile()):
            raise PiSAError(f"Cannot write {str(path)!r}: icc_profile must be profile bytes, {SRGB!r} or None; "
                            f"got {icc_profile!r}.")
        return data, srgb_profile() if colour == 3 or fmt == "WEBP" else None  # WebP stores gray as RGB
    try:
        profile = parse_profile(bytes(icc_profile))
    except ProfileError as exc:
        raise PiSAError(f"Cannot write {str(path)!r} with its ICC profile: {exc}.") from None
    if colour == 1 and fmt == "WEBP" and profile.matrix is not None and profile.matrix.gray:
        log.info("pisa-sr: %s: WebP stores gray as RGB, which the gray profile %r does not fit; written as sRGB",
                 path, profile.description)
        return data, srgb_profile()
    if profile.matrix is None or profile.matrix.channels != colour:
        what = "gray" if colour == 1 else "colour"
        raise PiSAError(f"Cannot write {str(path)!r} in the ICC profile {profile.description!r}: it is not a "
                        f"matrix profile for a {what} {fmt} image; write it as sRGB.")
    converted = data.copy()
    converted[..., :colour] = matrix_from_srgb(torch.from_numpy(data[..., :colour]), profile.matrix).numpy()
    return converted, profile.data


def _png_profile_chunks(embed: bytes | None, channels: int, icc_profile) -> list[tuple[bytes, bytes]]:
    """The PNG chunk of the colour space: iCCP with an embedded profile (PNG spec. 11.3.3.3,
    profile name, compression method 0, zlib data), or sRGB (11.3.3.5, perceptual intent) for a
    gray image tagged as sRGB (an RGB profile is not allowed in a gray PNG)."""
    if embed is not None:
        return [(b"iCCP", b"ICC profile\0\0" + zlib.compress(embed))]
    if icc_profile == SRGB and channels in (1, 2):
        return [(b"sRGB", b"\0")]
    return []


def _save_pil(f, levels: np.ndarray, fmt: str, quality: int, chunks: list[tuple[bytes, bytes]],
              icc_profile: bytes | None) -> None:
    pil = Image.fromarray(levels[..., 0] if levels.shape[2] == 1 else levels)  # uint8: L, LA, RGB, RGBA
    profile = {} if icc_profile is None else {"icc_profile": icc_profile}
    if fmt == "JPEG":
        pil.save(f, format="JPEG", quality=quality, subsampling=0, **profile)
    elif fmt == "WEBP":
        pil.save(f, format="WEBP", quality=quality, **profile)
    else:
        info = PngInfo()
        for kind, data in chunks:
            info.add(kind, data)
        pil.save(f, format="PNG", pnginfo=info, **profile)


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


# --- PNG text chunks ------------------------------------------------------------------------------


def _itxt(path: Path, keyword: str, text: str) -> bytes:
    """The data of an uncompressed iTXt chunk (PNG spec. 11.3.4.5): keyword, NUL, compression flag
    and method 0, empty language tag and translated keyword (each NUL-ended), UTF-8 text."""
    if not (1 <= len(keyword) <= 79 and keyword == keyword.strip() and keyword.isprintable()
            and all(ord(c) < 256 for c in keyword)):
        raise PiSAError(f"Cannot write {str(path)!r}: the PNG text keyword {keyword!r} must be 1 to 79 printable "
                        "Latin-1 characters without leading or trailing spaces.")
    return keyword.encode("latin-1") + b"\0\0\0\0\0" + text.encode("utf-8")


def _text_entry(kind: bytes, data: bytes) -> tuple[str, str]:
    """(keyword, text) of a tEXt, zTXt or iTXt chunk's data."""
    keyword, _, rest = data.partition(b"\0")
    if kind == b"tEXt":
        return keyword.decode("latin-1"), rest.decode("latin-1")
    if kind == b"zTXt":
        return keyword.decode("latin-1"), zlib.decompress(rest[1:]).decode("latin-1")
    compressed = rest[:1] == b"\1"
    _language, _, rest = rest[2:].partition(b"\0")
    _translated, _, body = rest.partition(b"\0")
    return keyword.decode("latin-1"), (zlib.decompress(body) if compressed else body).decode("utf-8")


def png_text(path) -> dict[str, str]:
    """The text chunks (tEXt, zTXt, iTXt, wherever they are) of a PNG file: keyword -> text.
    PiSAError naming the file when it is not a readable PNG."""
    path = Path(path)
    _check_file(path)
    found: dict[str, str] = {}
    try:
        with open(path, "rb") as f:
            for kind, data in png.Reader(file=f).chunks():
                if kind in _PNG_TEXT_CHUNKS:
                    keyword, text = _text_entry(kind, data)
                    found.setdefault(keyword, text)
    except (png.Error, OSError, ValueError, zlib.error) as exc:
        raise PiSAError(f"Cannot read the PNG chunks of {str(path)!r}: {exc}.") from exc
    return found


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


# --- safe writes ----------------------------------------------------------------------------------


def check_output_folder(folder, what: str = "output folder") -> Path:
    """Create `folder` (with its parents) and prove that files can be written there by creating and
    removing a temporary file; PiSAError naming the folder otherwise (a read-only filesystem, no
    permission, a regular file in the way). Front ends call it before any work."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise PiSAError(f"The {what} {str(folder)!r} is a file, not a folder.")
    probe = temporary_path(folder / "write-test")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "xb"):
            pass
        probe.unlink()
    except OSError as exc:
        raise PiSAError(f"Cannot write to the {what} {str(folder)!r}: {exc.strerror or exc}.") from None
    return folder


def _is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def skip_reason(path: Path) -> str:
    """Why list_inputs leaves a folder entry or a glob match out (it is not an _is_image_file)."""
    kind = special_file_kind(path)
    if kind is not None:
        return f"{kind}, not an image file"
    return f"unsupported format {path.suffix.lower() or '(no extension)'}"


def _split_images(paths) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(image files, [(other entry, why it is skipped)]), both sorted; subfolders are not entered
    and not reported (folders are not searched recursively)."""
    images, skipped = [], []
    for path in sorted(paths, key=str):
        if _is_image_file(path):
            images.append(path)
        elif not path.is_dir():
            skipped.append((path, skip_reason(path)))
    return images, skipped


def folder_images(folder) -> list[Path]:
    """The image files of a folder (by extension, not recursive, hidden files skipped), sorted."""
    return _split_images(p for p in Path(folder).iterdir() if not p.name.startswith("."))[0]


def list_inputs(patterns) -> list[Path]:
    """The image files of list_inputs_and_skipped, without the skipped entries."""
    return list_inputs_and_skipped(patterns)[0]


def list_inputs_and_skipped(patterns) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Expand files, folders and glob patterns into (a sorted-per-pattern, deduplicated file
    list, the entries left out with the reason: [(path, reason)]).

    A file, or a special file (a FIFO, a device), is taken as given (read_image judges it). A
    folder gives its image files (by extension, not recursive, hidden files skipped), sorted; its
    other files are skipped, with the reason (an unsupported format such as .gif, a FIFO). A glob
    pattern (* ? [ ], ** for recursion) gives the matching image files, sorted, and skips the
    other matching files the same way. A pattern that matches no image raises PiSAError.
    """
    if isinstance(patterns, (str, Path)):
        patterns = [patterns]
    found: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    seen: set[Path] = set()
    for pattern in patterns:
        text = str(pattern)
        path = Path(text)
        if path.is_dir():
            matches, left = _split_images(p for p in path.iterdir() if not p.name.startswith("."))
            if not matches:
                raise PiSAError(f"Input folder {text!r} has no image files "
                                f"(expected {', '.join(IMAGE_EXTENSIONS)}).")
        elif path.is_file() or special_file_kind(path) is not None:
            matches, left = [path], []
        elif _GLOB_CHARS & set(text):
            matches, left = _split_images(Path(p) for p in glob.glob(text, recursive=True))
            if not matches:
                raise PiSAError(f"Input pattern {text!r} matches no image files.")
        else:
            raise PiSAError(f"Input {text!r} does not exist (expected an image file, a folder "
                            f"or a glob pattern).")
        for match, reason in [(m, None) for m in matches] + left:
            key = match.resolve()
            if key in seen:
                continue
            seen.add(key)
            if reason is None:
                found.append(match)
            else:
                skipped.append((match, reason))
    if not found:
        raise PiSAError("No input images were given.")
    return found, skipped
