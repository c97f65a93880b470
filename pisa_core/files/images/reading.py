"""Reading images: read_image (8/16-bit, gray, alpha, EXIF orientation, ICC profiles to sRGB),
probe_image (the same checks from the header only), read_mask, and the release's 8-bit Pillow
route (to_pil_8bit).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ...errors import PiSAError
from .icc import Profile, ProfileError, lcms_to_srgb, matrix_to_srgb, parse_profile, profile_mode, srgb_profile
from .info import _MAX_8, _MAX_16, _TRANSPOSED, ImageInfo, _exif_orientation, _info_for
from .limits import open_checked
from .listing import _check_file, file_system_errors
from .png16 import _png16_channels, _read_png16, png_header
from .tiff import _read_tiff16, _Tag, _tiff16, _tiff_pages, check_layout_tags
from .writing import quantize

log = logging.getLogger(__name__)

#: Pillow format names we read (MPO is how Pillow opens many phone-camera JPEGs).
READ_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "TIFF", "BMP")

_LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, the weights of Pillow's convert("L")


def _open_pil(path: Path) -> Image.Image:
    """Open with Pillow and check the format and the frame count; PiSAError naming the file on
    any failure."""
    _check_file(path)
    _check_single_frame(path)
    try:
        im = open_checked(path, path)
    except PiSAError:  # our own header checks (a ValueError too) name the file already
        raise
    except UnidentifiedImageError as exc:
        raise PiSAError(f"Cannot read {str(path)!r}: not a recognised image file "
                        f"(expected PNG, JPEG, WebP, TIFF or BMP).") from exc
    except (OSError, ValueError, SyntaxError) as exc:  # Pillow's errors for a damaged header
        raise PiSAError(f"Cannot read image {str(path)!r}: {exc}.") from exc
    if im.format == "TIFF":
        try:
            check_layout_tags(im.tag_v2, path)
        except PiSAError:
            im.close()
            raise
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


@file_system_errors
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
    fit the image or littleCMS cannot convert with it (reported, ignored, as a damaged profile).
    16-bit gray is refused by name."""
    if im.mode.startswith("I") or im.mode == "F":
        _refuse_16bit_table(path, profile)
    rgb_modes = ("RGB", "RGBA", "RGBX", "RGBa", "P", "PA")
    if profile.space == "GRAY" or not (im.mode == profile_mode(profile) or
                                       (profile_mode(profile) == "RGB" and im.mode in rgb_modes)):
        _ignore_profile(path, profile, f"a {profile.space} table profile on a {im.mode} image")
        return None
    try:
        converted = lcms_to_srgb(im, profile)
    except ProfileError as exc:
        _ignore_profile(path, profile, str(exc))
        return None
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


@file_system_errors
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


@file_system_errors
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


