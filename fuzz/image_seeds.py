"""Small valid image files built by code: the seeds of the image, mask and ICC targets. One per
format, bit depth, layout and compression the readers accept (docs/images.md, "What is read")."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from icc_profiles import gray_profile, para_curve, rgb_profile, table_rgb_profile
from tiff_files import tiff16_bytes

#: What the image targets reach, imported under instrumentation (fuzz/harness.py, MODULES).
MODULES = ("pisa_core.files.images", "png", "PIL.Image", "PIL.ImageFile", "PIL.ImageOps", "PIL.ImageCms", "PIL.TiffTags",
           "PIL.PngImagePlugin", "PIL.JpegImagePlugin", "PIL.MpoImagePlugin", "PIL.WebPImagePlugin",
           "PIL.TiffImagePlugin", "PIL.BmpImagePlugin")
RNG = np.random.default_rng(40)
SIZE = (6, 7)  # height, width: small, odd, not square


def levels(channels: int, bits: int = 8) -> np.ndarray:
    dtype = np.uint16 if bits == 16 else np.uint8
    return RNG.integers(0, 2 ** bits, size=(*SIZE, channels)).astype(dtype)


def pillow(image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def png16(data: np.ndarray, **options) -> bytes:
    import png

    height, width, planes = data.shape
    buffer = io.BytesIO()
    png.Writer(width, height, greyscale=planes < 3, alpha=planes in (2, 4), bitdepth=16, **options).write_array(
        buffer, data.reshape(-1))
    return buffer.getvalue()


def profiles() -> dict[str, bytes]:
    """ICC profiles of each kind the reader handles: matrix/TRC RGB (gamma, parametric), gray,
    table-based (A2B0), littleCMS's own sRGB."""
    from PIL import ImageCms

    return {"rgb-gamma.icc": rgb_profile(), "rgb-para.icc": rgb_profile(curve=para_curve((2.4, 0.95, 0.05, 0.08, 0.04))),
            "gray.icc": gray_profile(), "table.icc": table_rgb_profile(),
            "srgb.icc": ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()}


def images() -> dict[str, bytes]:
    from PIL import Image

    rgb, rgba, gray = (Image.fromarray(levels(c)[..., 0] if c == 1 else levels(c)) for c in (3, 4, 1))
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the orientation path
    icc = profiles()
    out = {
        "png8-rgb.png": pillow(rgb, "PNG"), "png8-rgba.png": pillow(rgba, "PNG"), "png8-gray.png": pillow(gray, "PNG"),
        "png8-palette-trns.png": pillow(palette, "PNG", transparency=0),
        "png8-1bit.png": pillow(gray.convert("1"), "PNG"),
        "png8-icc-exif.png": pillow(rgb, "PNG", icc_profile=icc["rgb-gamma.icc"], exif=exif),
        "png16-gray.png": png16(levels(1, 16)), "png16-rgb.png": png16(levels(3, 16)),
        "png16-rgba.png": png16(levels(4, 16)), "png16-la.png": png16(levels(2, 16)),
        "png16-trns.png": png16(levels(3, 16), transparent=(1, 2, 3)),
        "jpeg-rgb.jpg": pillow(rgb, "JPEG", quality=90, exif=exif), "jpeg-gray.jpg": pillow(gray, "JPEG"),
        "jpeg-cmyk.jpg": pillow(rgb.convert("CMYK"), "JPEG"),
        "jpeg-icc-table.jpg": pillow(rgb, "JPEG", icc_profile=icc["table.icc"]),
        "webp-rgb.webp": pillow(rgb, "WEBP", lossless=True), "webp-rgba.webp": pillow(rgba, "WEBP", quality=80),
        "bmp-rgb.bmp": pillow(rgb, "BMP"), "bmp-palette.bmp": pillow(palette, "BMP"),
        "tiff16-gray.tif": pillow(Image.fromarray(levels(1, 16)[..., 0]), "TIFF"),
    }
    for compression in ("raw", "tiff_lzw", "tiff_adobe_deflate", "packbits", "jpeg"):
        out[f"tiff8-rgb-{compression}.tif"] = pillow(rgb, "TIFF", compression=compression)
    out["tiff8-rgba-planar-icc.tif"] = pillow(rgba, "TIFF", compression="tiff_lzw", icc_profile=icc["rgb-gamma.icc"])
    out["tiff8-gray-gray-icc.tif"] = pillow(gray, "TIFF", icc_profile=icc["gray.icc"])
    layouts = {"strips": {}, "be": {"order": ">"}, "planar": {"planar": True}, "tiled": {"tile": 16},
               "deflate-pred": {"deflate": True, "predictor": True},
               "tiled-deflate-pred-be": {"tile": 16, "deflate": True, "predictor": True, "order": ">"}}
    for name, layout in layouts.items():
        out[f"tiff16-rgb-{name}.tif"] = tiff16_bytes(levels(3, 16), **layout)
    out["tiff16-rgba-premultiplied.tif"] = tiff16_bytes(levels(4, 16), extra=1)
    out["tiff16-la.tif"] = tiff16_bytes(levels(2, 16), planar=True)
    return out


def ours() -> dict[str, bytes]:
    """Files our writer makes (16-bit TIFF with deflate + predictor and a profile, 16-bit PNG with
    a profile and text): what users feed back in."""
    import tempfile

    import torch

    from pisa_core.files.images import write_image

    out = {}
    with tempfile.TemporaryDirectory() as folder:
        image = torch.from_numpy(levels(4, 16).astype(np.float32) / 65535)
        for name, bits, channels in (("ours16.tif", 16, 4), ("ours16.png", 16, 3), ("ours8.tif", 8, 2)):
            path = Path(folder) / name
            write_image(path, image[..., :channels], bits, text={"pisa-sr": "{}"},
                        icc_profile=rgb_profile() if channels >= 3 else None)
            out[name] = path.read_bytes()
    return out
