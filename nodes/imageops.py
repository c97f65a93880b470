"""The Guidance Grid's labelled comparison sheet (resampling comes from pisa_core.inference.geometry)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..pisa_core.inference.geometry import resize


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def comparison_sheet(cells: list[torch.Tensor], labels: list[str], columns: int, cell_size: int) -> torch.Tensor:
    """Cells [H,W,C] in [0,1] laid out row by row, each with its label above it → IMAGE [H',W',3]."""
    h, w = cells[0].shape[:2]
    if cell_size and max(h, w) > cell_size:
        scale = cell_size / max(h, w)
        h, w = max(1, round(h * scale)), max(1, round(w * scale))
    font_px = max(10, min(32, w // 12))
    band = font_px + 8
    rows = (len(cells) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * w, rows * (h + band)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    font = _font(font_px)
    for i, (cell, label) in enumerate(zip(cells, labels)):
        r, c = divmod(i, columns)
        rgb = cell[..., :3] if cell.shape[-1] >= 3 else cell[..., :1].expand(-1, -1, 3)
        small = resize(rgb.permute(2, 0, 1)[None].float().cpu(), (h, w), "bicubic")[0]
        array = (small.permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
        top = r * (h + band)
        sheet.paste(Image.fromarray(array), (c * w, top + band))
        draw.text((c * w + 4, top + 3), label, fill=(235, 235, 235), font=font)
    return torch.from_numpy(np.asarray(sheet, dtype=np.float32) / 255.0)
