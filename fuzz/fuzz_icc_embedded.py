"""ICC profiles embedded in images: the input is the profile, embedded into small images of each
kind that carries one (8-bit PNG RGB and gray, JPEG, 16-bit PNG, 16-bit TIFF), which read_image
converts to sRGB and write_image converts back and embeds (the CLI's default --output-profile; PNG outputs)."""

from __future__ import annotations

import io
import sys
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import main
from image_seeds import MODULES  # noqa: F401  (the harness imports them instrumented)

SUFFIX = ".icc"


def seeds() -> dict[str, bytes]:
    import image_seeds

    return image_seeds.profiles()


def _carriers(profile: bytes) -> dict[str, bytes]:
    """Small images carrying `profile`: Pillow embeds it in 8-bit PNG, JPEG and TIFF; a 16-bit PNG
    gets an iCCP chunk; a 16-bit RGB TIFF the InterColorProfile tag."""
    import image_seeds
    import png
    from PIL import Image

    from pisa_core.files.images.tiff import _write_tiff

    rgb = Image.fromarray(image_seeds.levels(3))
    gray = Image.fromarray(image_seeds.levels(1)[..., 0])
    out = {"rgb.png": image_seeds.pillow(rgb, "PNG", icc_profile=profile),
           "gray.png": image_seeds.pillow(gray, "PNG", icc_profile=profile),
           "rgb.jpg": image_seeds.pillow(rgb, "JPEG", icc_profile=profile),
           "rgba.tif": image_seeds.pillow(rgb.convert("RGBA"), "TIFF", icc_profile=profile)}
    plain = image_seeds.png16(image_seeds.levels(3, 16))
    chunks = list(png.Reader(bytes=plain).chunks())
    iccp = (b"iCCP", b"profile\0\0" + zlib.compress(profile))
    buffer = io.BytesIO()
    png.write_chunks(buffer, [chunks[0], iccp, *chunks[1:]])
    out["rgb16.png"] = buffer.getvalue()
    buffer = io.BytesIO()
    _write_tiff(buffer, image_seeds.levels(3, 16), profile)
    out["rgb16.tif"] = buffer.getvalue()
    return out


def parse(path: Path) -> object:
    from pisa_core.errors import PiSAError
    from pisa_core.files.images import read_image, write_image

    results = []
    for name, data in _carriers(path.read_bytes()).items():
        image_path = path.with_name("carrier-" + name)
        image_path.write_bytes(data)
        try:
            image, info = read_image(image_path)
        except PiSAError:
            continue
        if not name.endswith(".png"):
            continue  # writing back parses the profile the same way for every format; PNG is enough
        output = path.with_name("written-" + name)
        try:
            write_image(output, image, info.bit_depth, icc_profile=info.icc_profile)
        except PiSAError:
            continue
        results.append(read_image(output)[0].shape)
    return results


if __name__ == "__main__":
    main(__file__)
