"""Image helpers of the node pack: ComfyUI IMAGE <-> channels-first, resampling, and the labelled
comparison sheet (sizes and padding come from pisa_core.geometry)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from ..pisa_core.errors import PiSAError
from ..pisa_core.geometry import exact_output_size

RESAMPLING = ("bicubic", "lanczos", "bilinear", "area", "nearest-exact")
PROCESS_SIZE = 512  # the resolution the model was trained at (release facts)
MAX_PIXELS = 64 * 1024 * 1024  # a guard against typos like upscale_by 80: 64 MP per image


def to_rgb_chw(image: torch.Tensor, what: str = "image") -> torch.Tensor:
    """ComfyUI IMAGE [B,H,W,C] (C 1..4) → [B,3,H,W] float32 in [0,1] on the CPU; alpha is dropped."""
    if not torch.is_tensor(image) or image.dim() != 4 or image.shape[-1] not in (1, 2, 3, 4):
        shape = tuple(image.shape) if torch.is_tensor(image) else type(image).__name__
        raise PiSAError(f"The {what} input must be an IMAGE [batch, height, width, channels], got {shape}.")
    chw = image.detach().float().cpu().permute(0, 3, 1, 2).clamp(0, 1)
    if chw.shape[1] < 3:
        chw = chw[:, :1].expand(-1, 3, -1, -1)
    return chw[:, :3].contiguous()


def to_image(chw: torch.Tensor) -> torch.Tensor:
    """[B,3,H,W] in [0,1] → ComfyUI IMAGE [B,H,W,3] float32 on the CPU."""
    return chw.detach().float().cpu().clamp(0, 1).permute(0, 2, 3, 1).contiguous()


def output_size(h: int, w: int, factor: float) -> tuple[int, int]:
    """The core's exact output size, with a guard against typos like upscale_by 80."""
    out = exact_output_size(h, w, factor)
    if out[0] * out[1] > MAX_PIXELS:
        raise PiSAError(f"A {w}x{h} image upscaled by {factor} would be {out[1]}x{out[0]}, larger than the "
                        f"{MAX_PIXELS // (1024 * 1024)} MP this node accepts; use a smaller upscale_by.")
    return out


def _lanczos(chw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Pillow's Lanczos filter on float planes (no 8-bit rounding)."""
    out_h, out_w = size
    planes = [np.asarray(Image.fromarray(np.ascontiguousarray(p, dtype=np.float32)).resize((out_w, out_h), Image.LANCZOS))
              for p in chw.reshape(-1, *chw.shape[-2:]).numpy()]
    return torch.from_numpy(np.stack(planes)).reshape(*chw.shape[:-2], out_h, out_w)


def resize(chw: torch.Tensor, size: tuple[int, int], method: str = "bicubic") -> torch.Tensor:
    """[B,C,H,W] in [0,1] → [B,C,*size] with the named resampling, clamped to [0,1]."""
    if tuple(chw.shape[-2:]) == tuple(size):
        return chw
    if method not in RESAMPLING:
        raise PiSAError(f"resampling must be one of {', '.join(RESAMPLING)}, got {method!r}.")
    if method == "lanczos":
        return _lanczos(chw.float().cpu(), size).clamp(0, 1)
    kwargs = {"align_corners": False} if method in ("bicubic", "bilinear") else {}
    if method in ("bicubic", "bilinear") and (size[0] < chw.shape[-2] or size[1] < chw.shape[-1]):
        kwargs["antialias"] = True
    return F.interpolate(chw.float(), size=size, mode=method, **kwargs).clamp(0, 1)


def match_batch(reference: torch.Tensor, batch: int, what: str) -> torch.Tensor:
    if reference.shape[0] == batch:
        return reference
    if reference.shape[0] == 1:
        return reference.expand(batch, -1, -1, -1)
    raise PiSAError(f"The {what} has {reference.shape[0]} images but the latent has {batch}; give 1 or {batch}.")


# ---------------------------------------------------------------- comparison sheet

def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def comparison_sheet(cells: list[torch.Tensor], labels: list[str], columns: int, cell_size: int) -> torch.Tensor:
    """Cells [3,H,W] in [0,1] laid out row by row, each with its label above it → [H',W',3]."""
    h, w = cells[0].shape[-2:]
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
        small = resize(cell[None].float().cpu(), (h, w), "bicubic")[0]
        array = (small.permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
        top = r * (h + band)
        sheet.paste(Image.fromarray(array), (c * w, top + band))
        draw.text((c * w + 4, top + 3), label, fill=(235, 235, 235), font=font)
    array = np.asarray(sheet, dtype=np.float32) / 255.0
    return torch.from_numpy(array.copy())
