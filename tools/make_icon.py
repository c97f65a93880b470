"""icon.png, the pack's 400×400 icon for the Comfy Registry (pyproject.toml, [tool.comfy] Icon),
drawn with Pillow: a low-resolution grid of blocks on the left turning into a smooth gradient on
the right, the pack's one idea (super-resolution) in two colours for its two LoRAs.

    python tools/make_icon.py

A development tool: not part of the packed node (.comfyignore); the icon it writes is.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
ICON = ROOT / "icon.png"
SIDE = 400
PIXEL, SEMANTIC, BACKGROUND = (38, 110, 201), (232, 120, 38), (250, 250, 247)


def mix(a: tuple, b: tuple, t: float) -> tuple:
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b))


def draw() -> Image.Image:
    image = Image.new("RGB", (SIDE, SIDE), BACKGROUND)
    pen = ImageDraw.Draw(image)
    inset, block = 40, 40  # a 4×8 grid of coarse blocks on the left half
    for row in range(8):
        for col in range(4):
            t = (row + col) / 10
            x, y = inset + col * block, inset + row * block
            pen.rectangle([x + 2, y + 2, x + block - 3, y + block - 3], fill=mix(PIXEL, SEMANTIC, t))
    for y in range(inset, SIDE - inset):  # the right half: the same colours, smooth
        for x in range(SIDE // 2, SIDE - inset):
            t = ((y - inset) + (x - SIDE // 2 + 80)) / (SIDE - 2 * inset + 160)
            image.putpixel((x, y), mix(PIXEL, SEMANTIC, t))
    return image


def main() -> int:
    draw().quantize(colors=64).save(ICON, optimize=True)
    print(f"wrote {ICON.relative_to(ROOT)} ({ICON.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
