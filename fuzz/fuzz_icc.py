"""ICC profiles: the parser (parse_profile) fed profile bytes, and the conversions a parsed matrix
profile drives (to sRGB and back), as read_image and write_image run them."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import main
from image_seeds import MODULES  # noqa: F401  (the harness imports them instrumented)

SUFFIX = ".icc"


def seeds() -> dict[str, bytes]:
    import image_seeds

    return image_seeds.profiles()


def parse(path: Path) -> object:
    import torch

    from pisa_core.files.images.icc import matrix_from_srgb, matrix_to_srgb, parse_profile

    profile = parse_profile(path.read_bytes())
    if profile.matrix is not None:
        colour = torch.linspace(0, 1, 4 * profile.matrix.channels).reshape(4, profile.matrix.channels)
        for converted in (matrix_to_srgb(colour, profile.matrix), matrix_from_srgb(colour, profile.matrix)):
            assert converted.shape == colour.shape and bool(torch.isfinite(converted).all()), converted
    return profile


if __name__ == "__main__":
    main(__file__)
