"""Every image format and layout read_image accepts (PNG 8/16, JPEG, WebP, BMP, TIFF 8/16 in
strips/tiles, planar, compressed, with predictor, embedded ICC profiles, EXIF orientation), through
the header check (probe_image), the reader (read_image) and the release's 8-bit route (to_pil_8bit).
The file name's extension does not matter to the readers (they judge the content)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import main
from image_seeds import MODULES  # noqa: F401  (the harness imports them instrumented)

SUFFIX = ".img"


def seeds() -> dict[str, bytes]:
    import image_seeds

    return {**image_seeds.images(), **image_seeds.ours()}


def parse(path: Path) -> object:
    from pisa_core.errors import PiSAError
    from pisa_core.files.images import probe_image, read_image, to_pil_8bit

    try:
        probe_image(path)
    except PiSAError:
        pass  # read_image must refuse it too, or read it: both are checked
    try:
        to_pil_8bit(path)
    except PiSAError:
        pass
    return read_image(path)


if __name__ == "__main__":
    # The header limit, lowered so that a file declaring the largest allowed image fits libFuzzer's
    # memory bound (-rss_limit_mb) and time bound (-timeout) on a busy machine: the check is the same at any limit.
    os.environ.setdefault("PISA_SR_MAX_IMAGE_PIXELS", str(2**20))
    main(__file__)
