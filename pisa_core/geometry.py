"""Image geometry around the model: from the low-quality input to the working resolution the VAE
sees (a multiple of 8), and from the model's output back to the final size.

Two modes:
- ``exact`` (default): the output is exactly ``round(upscale × input size)``. Bicubic upscaling in
  torch, replicate padding to a multiple of 8 that is cropped away afterwards.
- ``release``: the authors' release, step by step (Pillow bicubic ×upscale, Lanczos resize to a
  multiple of 8, the small-input path with ``process_size``), for numerical parity.

In both, inputs whose upscaled short side is below ``process_size`` are first enlarged so that the
model works at its training resolution, and the result is brought back to the target size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .errors import PiSAError

LATENT_FACTOR = 8
MIN_WORK_SIDE = 64  # 8 latent pixels: the UNet's three 2x downsamplings need at least this much


@dataclass
class Prepared:
    """What the model needs, and how to get back to the final image."""

    pixels: torch.Tensor          # [B,3,Hp,Wp] in [-1, 1]; Hp, Wp multiples of 8
    work_size: tuple[int, int]    # (Hw, Ww): the upscaled LQ inside `pixels`, before padding
    out_size: tuple[int, int]     # final (H, W)
    geometry: str

    @property
    def reference(self) -> torch.Tensor:
        """[B,3,Hw,Ww] in [0,1]: the upscaled LQ, the colour reference. Derived from `pixels`
        rather than stored, so a 4096² upscale holds one full-size input buffer, not two."""
        work_h, work_w = self.work_size
        return (self.pixels[..., :work_h, :work_w] + 1) / 2


def working_size(out_h: int, out_w: int, process_size: int) -> tuple[int, int]:
    """Enlarge so that the short side reaches process_size (the release's small-input rule)."""
    short = min(out_h, out_w)
    if process_size and short < process_size:
        factor = process_size / short
        return max(1, round(out_h * factor)), max(1, round(out_w * factor))
    return out_h, out_w


def exact_output_size(h: int, w: int, upscale: float) -> tuple[int, int]:
    out = (round(h * upscale), round(w * upscale))
    if min(out) < 1:
        raise PiSAError(f"upscale {upscale} turns a {w}x{h} image into nothing; use a larger factor")
    return out


def prepare_exact(rgb: torch.Tensor, upscale: float, process_size: int) -> Prepared:
    """rgb [B,3,H,W] in [0,1] → bicubic to the working size, padded (replicate) to a multiple of 8
    and at least 64 pixels a side; the padding is cropped away in `finish`."""
    out_h, out_w = exact_output_size(rgb.shape[-2], rgb.shape[-1], upscale)
    work_h, work_w = working_size(out_h, out_w, process_size)
    up = F.interpolate(rgb.float(), size=(work_h, work_w), mode="bicubic", align_corners=False).clamp(0, 1)
    pixels = pad_for_vae(up.mul_(2).sub_(1))
    return Prepared(pixels, (work_h, work_w), (out_h, out_w), "exact")


def pad_for_vae(image: torch.Tensor, min_side: int = MIN_WORK_SIDE) -> torch.Tensor:
    """Replicate-pad bottom/right to a multiple of 8 and at least `min_side` pixels a side (64:
    the UNet's three 2x downsamplings need 8 latent pixels); the padding is cropped away after
    decoding."""
    h, w = image.shape[-2:]
    pad_h = max(min_side, h + (-h) % LATENT_FACTOR) - h
    pad_w = max(min_side, w + (-w) % LATENT_FACTOR) - w
    return F.pad(image, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else image


def finish(out01: torch.Tensor, prepared: Prepared) -> torch.Tensor:
    """Crop the padding away and resize the working-size result to the final size."""
    work_h, work_w = prepared.work_size
    out01 = out01[..., :work_h, :work_w]
    if (work_h, work_w) == prepared.out_size:
        return out01
    if prepared.geometry == "release":
        return torch.stack([_pil_resize_float(img, prepared.out_size, Image.BICUBIC) for img in out01])
    return F.interpolate(out01, size=prepared.out_size, mode="bicubic", align_corners=False,
                         antialias=True).clamp(0, 1)


# --- release geometry -----------------------------------------------------------------------------

def _pil_resize_float(image: torch.Tensor, size_hw: tuple[int, int], resample: int) -> torch.Tensor:
    """Pillow's resampling filter on float data ([C,H,W] in [0,1]): one 'F'-mode plane per channel,
    horizontal pass then vertical pass, clamped to [0,1] after each like Pillow's 8-bit path
    saturates between its two passes (without its 8-bit rounding)."""
    out_h, out_w = size_hw
    planes = []
    for channel in image.detach().float().cpu().numpy():
        plane = np.ascontiguousarray(channel, dtype=np.float32)
        if plane.shape[1] != out_w:
            plane = np.clip(np.asarray(Image.fromarray(plane).resize((out_w, plane.shape[0]), resample)), 0, 1)
        if plane.shape[0] != out_h:
            plane = np.clip(np.asarray(Image.fromarray(plane).resize((out_w, out_h), resample)), 0, 1)
        planes.append(np.asarray(plane, dtype=np.float32))
    return torch.from_numpy(np.stack(planes)).to(image.device)


class _ReleaseImage:
    """One image on the release's path: a Pillow 8-bit image (bit-exact with the release) or a
    float tensor [3,H,W] resampled with the same Pillow filters in float."""

    def __init__(self, image):
        self.image = image

    @property
    def size_wh(self) -> tuple[int, int]:
        if isinstance(self.image, Image.Image):
            return self.image.size
        return self.image.shape[-1], self.image.shape[-2]

    def resize(self, size_wh: tuple[int, int], resample: int) -> "_ReleaseImage":
        if isinstance(self.image, Image.Image):
            return _ReleaseImage(self.image.resize(size_wh, resample))
        return _ReleaseImage(_pil_resize_float(self.image, (size_wh[1], size_wh[0]), resample))

    def tensor(self) -> torch.Tensor:
        if isinstance(self.image, Image.Image):
            array = np.asarray(self.image.convert("RGB"), dtype=np.float32) / 255.0
            return torch.from_numpy(array).permute(2, 0, 1).contiguous()
        return self.image.float()


def prepare_release_one(image, upscale: int, process_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """The release's pre-processing of one image (Pillow image or float [3,H,W]); returns the
    colour reference [3,Hw,Ww] in [0,1] and the final size."""
    if float(upscale) != int(upscale) or upscale < 1:
        raise PiSAError(f"the release geometry needs a whole upscale factor, got {upscale}")
    upscale = int(upscale)
    img = _ReleaseImage(image)
    ori_w, ori_h = img.size_wh
    min_side = process_size // upscale
    enlarged = ori_w < min_side or ori_h < min_side
    if enlarged:
        scale = min_side / min(ori_w, ori_h)
        img = img.resize((int(scale * ori_w), int(scale * ori_h)), Image.BICUBIC)
    w, h = img.size_wh
    img = img.resize((w * upscale, h * upscale), Image.BICUBIC)
    w, h = img.size_wh
    new_w, new_h = w - w % LATENT_FACTOR, h - h % LATENT_FACTOR
    if new_w == 0 or new_h == 0:
        raise PiSAError(f"a {ori_w}x{ori_h} image is too small for the release geometry at x{upscale} "
                        f"with process size {process_size}; use geometry 'exact'")
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.LANCZOS)
    out_size = (upscale * ori_h, upscale * ori_w) if enlarged else (new_h, new_w)
    return img.tensor(), out_size


def prepare_release(images, upscale: int, process_size: int) -> Prepared:
    """images: a list of Pillow images or a float tensor [B,3,H,W] in [0,1]."""
    refs, sizes = zip(*(prepare_release_one(im, upscale, process_size) for im in images))
    pixels = torch.stack(refs).mul_(2).sub_(1)
    return Prepared(pixels, tuple(pixels.shape[-2:]), sizes[0], "release")
