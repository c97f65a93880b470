"""The settings text a PNG carries (`pisa-sr info`, read_png_settings): tEXt, zTXt and iTXt chunks anywhere
in the file, and the settings' JSON."""

from __future__ import annotations

import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import main

SUFFIX = ".png"
MODULES = ("pisa_core.files.images.png_text", "png")


def seeds() -> dict[str, bytes]:
    import numpy as np
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("pisa-sr", '{"lambda_pix": 1.0, "lambda_sem": 1.0}')
    info.add_text("comment", "zipped " * 20, zip=True)
    info.add_itxt("title", "λ settings", lang="en", tkey="Titel")
    out = {}
    for name, pnginfo in (("plain.png", None), ("text.png", info)):
        buffer = io.BytesIO()
        Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3)).save(buffer, "PNG", pnginfo=pnginfo)
        out[name] = buffer.getvalue()
    return out


def parse(path: Path) -> object:
    from pisa_core.errors import PiSAError
    from pisa_core.files.images import png_text, read_png_settings

    try:
        read_png_settings(path)
    except PiSAError:
        pass
    return png_text(path)


if __name__ == "__main__":
    main(__file__)
