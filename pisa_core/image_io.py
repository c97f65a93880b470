"""Image files in and out for the CLI: 8/16-bit, gray, alpha, EXIF orientation, input lists.

Images are tensors [H, W, C] float32 in 0..1 with C = 1 (gray), 2 (gray + alpha), 3 (RGB) or
4 (RGBA). Pillow reads and writes everything except 16-bit PNGs: Pillow silently reduces 16-bit
colour/alpha PNGs to 8 bit (and cannot write them), so every 16-bit PNG goes through pypng.
"""

from __future__ import annotations

import glob
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import png
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import PiSAError

#: Pillow format names we read (MPO is how Pillow opens many phone-camera JPEGs).
READ_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "TIFF", "BMP")
#: File extensions picked up from folders and glob patterns by list_inputs.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")
#: Output extensions write_image knows -> Pillow format name.
WRITE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_GLOB_CHARS = frozenset("*?[")
_ORIENTATION_TAG = 0x0112
_MAX_16 = 65535
_MAX_8 = 255


@dataclass
class ImageInfo:
    """What the source file held, so the output can be written the same way.

    mode: Pillow's mode for the file ("RGB", "RGBA", "L", "LA", "P", "I;16", ...); 16-bit PNGs
    read through pypng report "L;16", "LA;16", "RGB;16" or "RGBA;16".
    """

    mode: str
    bit_depth: int  # 8 or 16
    channels: int  # 1..4, the C of the tensor read_image returns
    has_alpha: bool
    gray: bool


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


def _check_file(path: Path) -> None:
    if not path.exists():
        raise PiSAError(f"Image file {str(path)!r} does not exist.")
    if not path.is_file():
        raise PiSAError(f"Image path {str(path)!r} is not a file (expected an image file).")


def _open_pil(path: Path) -> Image.Image:
    """Open with Pillow and check the format; PiSAError naming the file on any failure."""
    _check_file(path)
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
    return im


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


def _pil_to_array(im: Image.Image, path: Path) -> tuple[np.ndarray, int, int]:
    """Pixels of an oriented Pillow image as (uint array [H, W, C], max value, bit depth)."""
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(im, dtype=np.uint16)[..., None], _MAX_16, 16
    if mode == "I":
        data = np.asarray(im)
        if data.size and (data.min() < 0 or data.max() > _MAX_16):
            raise PiSAError(f"Image {str(path)!r} has 32-bit integer values outside 0..65535; "
                            f"expected 8- or 16-bit samples.")
        return data.astype(np.uint16)[..., None], _MAX_16, 16
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
    data = np.asarray(im.convert(target) if im.mode != target else im, dtype=np.uint8)
    if data.ndim == 2:
        data = data[..., None]
    return data, _MAX_8, 8


def read_image(path) -> tuple[torch.Tensor, ImageInfo]:
    """Read an image file as ([H, W, C] float32 in 0..1, ImageInfo), EXIF orientation applied.

    PNG, JPEG, WebP, TIFF, BMP. C is 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA); palette
    images become RGB, or RGBA when they carry transparency. 16-bit samples are divided by 65535,
    8-bit ones by 255. Multi-frame files give their first frame.
    """
    path = Path(path)
    _check_file(path)
    header = png_header(path)
    if header is not None and header[0] == 16:
        _open_pil(path).close()  # same format check and errors as every other file
        return _read_png16(path)
    with _open_pil(path) as im:
        source_mode = im.mode
        oriented = _load(im, path)
        data, max_value, bit_depth = _pil_to_array(oriented, path)
    image = torch.from_numpy(data.astype(np.float32) / np.float32(max_value))
    return image.contiguous(), _info_for(data.shape[2], bit_depth, source_mode)


def to_pil_8bit(path, *, exif_transpose: bool = True) -> Image.Image:
    """The release's Pillow route: an 8-bit "RGB" image, or "RGBA" when the file has alpha.

    Pillow's own convert() is used, so 8-bit files give exactly what Image.open(p).convert("RGB")
    gives in the release. 16-bit gray, which Pillow's convert() would clip to 255, is scaled to
    8 bit first (round(v / 257)). 16-bit colour PNGs come as Pillow decodes them (8 bit).
    exif_transpose applies the EXIF orientation, as read_image does.
    """
    path = Path(path)
    with _open_pil(path) as im:
        oriented = _load(im, path, orient=exif_transpose)
        mode = oriented.mode
        if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
            data, _, _ = _pil_to_array(oriented, path)
            levels = np.floor(data[..., 0].astype(np.float32) / np.float32(257) + 0.5)
            oriented = Image.fromarray(levels.astype(np.uint8))
            mode = "L"
        has_alpha = mode in ("LA", "La", "PA", "RGBA", "RGBa") or (
            mode == "P" and oriented.has_transparency_data)
        result = oriented.convert("RGBA" if has_alpha else "RGB")
    return result


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


def write_image(path, image, bit_depth: int = 8, *, quality: int = 95) -> None:
    """Write [H, W, C] float 0..1 (C 1..4) to PNG (8 or 16 bit), JPEG or WebP (8 bit).

    Values are clamped to 0..1 and rounded. JPEG has no alpha: C = 2 or 4 to JPEG is refused
    (drop the alpha channel first) rather than flattened onto a guessed background. WebP stores
    gray as RGB. quality applies to JPEG (4:4:4 chroma) and WebP. Parent folders are created.
    """
    path = Path(path)
    fmt = WRITE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise PiSAError(f"Cannot write {str(path)!r}: unknown extension {path.suffix!r}; "
                        f"expected .png, .jpg, .jpeg or .webp.")
    if bit_depth not in (8, 16):
        raise PiSAError(f"Cannot write {str(path)!r}: bit depth must be 8 or 16, got {bit_depth!r}.")
    if bit_depth == 16 and fmt != "PNG":
        raise PiSAError(f"Cannot write {str(path)!r} with 16 bits: {fmt} holds 8 bits; "
                        f"use a .png file or bit_depth=8.")
    data = _check_image(image, path)
    channels = data.shape[2]
    if fmt == "JPEG" and channels in (2, 4):
        raise PiSAError(f"Cannot write {str(path)!r}: JPEG has no alpha channel and the image has "
                        f"{channels} channels; drop the alpha or write a .png/.webp file.")
    levels = quantize(data, bit_depth)
    path.parent.mkdir(parents=True, exist_ok=True)
    if bit_depth == 16:
        _write_png16(path, levels)
        return
    pil = Image.fromarray(levels[..., 0] if channels == 1 else levels)  # uint8: L, LA, RGB, RGBA
    if fmt == "JPEG":
        pil.save(path, format="JPEG", quality=quality, subsampling=0)
    elif fmt == "WEBP":
        pil.save(path, format="WEBP", quality=quality)
    else:
        pil.save(path, format="PNG")


def _write_png16(path: Path, levels: np.ndarray) -> None:
    height, width, channels = levels.shape
    writer = png.Writer(width, height, greyscale=channels in (1, 2), alpha=channels in (2, 4),
                        bitdepth=16)
    with open(path, "wb") as f:
        writer.write_array(f, levels.reshape(-1))


def _is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def list_inputs(patterns) -> list[Path]:
    """Expand files, folders and glob patterns into a sorted-per-pattern, deduplicated file list.

    A file is taken as given (read_image judges it). A folder gives its image files (by extension,
    not recursive, hidden files skipped), sorted. A glob pattern (* ? [ ], ** for recursion) gives
    the matching image files, sorted. A pattern that matches nothing raises PiSAError.
    """
    if isinstance(patterns, (str, Path)):
        patterns = [patterns]
    found: list[Path] = []
    seen: set[Path] = set()
    for pattern in patterns:
        text = str(pattern)
        path = Path(text)
        if path.is_file():
            matches = [path]
        elif path.is_dir():
            matches = sorted((p for p in path.iterdir()
                              if not p.name.startswith(".") and _is_image_file(p)), key=str)
            if not matches:
                raise PiSAError(f"Input folder {text!r} has no image files "
                                f"(expected {', '.join(IMAGE_EXTENSIONS)}).")
        elif _GLOB_CHARS & set(text):
            matches = sorted((Path(p) for p in glob.glob(text, recursive=True)
                              if _is_image_file(Path(p))), key=str)
            if not matches:
                raise PiSAError(f"Input pattern {text!r} matches no image files.")
        else:
            raise PiSAError(f"Input {text!r} does not exist (expected an image file, a folder "
                            f"or a glob pattern).")
        for match in matches:
            key = match.resolve()
            if key not in seen:
                seen.add(key)
                found.append(match)
    if not found:
        raise PiSAError("No input images were given.")
    return found
