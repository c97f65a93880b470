"""Writing images: PNG and TIFF (8 or 16 bit), JPEG and WebP (8 bit), ICC profiles and PNG text;
and the check that an output folder takes files.

Writes never leave a partial file under the final name: the bytes go to a hidden temporary file
in the same folder, which is renamed over the target only once it is complete (`atomic_output`).
"""

from __future__ import annotations

import logging
import zlib
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ...errors import PiSAError
from ..atomic import atomic_output, temporary_path
from .icc import ProfileError, matrix_from_srgb, parse_profile, srgb_profile
from .info import _MAX_8, _MAX_16
from .png16 import _write_png16
from .png_text import _itxt
from .tiff import _write_tiff

log = logging.getLogger(__name__)

#: Output extensions write_image knows -> format name.
WRITE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".tif": "TIFF", ".tiff": "TIFF"}

#: Output formats that hold 16-bit samples.
SIXTEEN_BIT_FORMATS = ("PNG", "TIFF")

#: write_image's icc_profile value for "sRGB, tagged as such" (no conversion).
SRGB = "srgb"


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


