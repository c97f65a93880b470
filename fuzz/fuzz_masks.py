"""Region masks (`--mask`, read_mask): gray, gray + alpha, RGB(A), palette with transparency, 8 and
16 bit, read as stored (no colour profile applied)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import main
from image_seeds import MODULES  # noqa: F401  (the harness imports them instrumented)

SUFFIX = ".png"


def seeds() -> dict[str, bytes]:
    import image_seeds

    keep = ("png8-gray", "png8-rgba", "png8-palette-trns", "png16-la", "png16-trns", "png8-1bit", "jpeg-gray",
            "webp-rgba", "tiff16-la", "tiff8-rgba", "bmp-palette")
    return {name: data for name, data in image_seeds.images().items() if name.startswith(keep)}


def parse(path: Path) -> object:
    from pisa_core.files.images import read_mask

    return read_mask(path)


if __name__ == "__main__":
    os.environ.setdefault("PISA_SR_MAX_IMAGE_PIXELS", str(2**20))  # as fuzz_images.py
    main(__file__)
