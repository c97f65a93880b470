"""Image geometry around the model: from the low-quality input to the working resolution the VAE
sees (a multiple of 8), and from the model's output back to the final size.

Two modes:
- ``exact`` (default): the output is exactly ``round(upscale × input size)``. The input is
  enlarged in torch (bicubic, or another resampling), replicate-padded to a multiple of 8 (and at
  least 64 pixels a side), and the padding is cropped away afterwards.
- ``release``: the authors' release, step by step (Pillow bicubic ×upscale, Lanczos resize to a
  multiple of 8, the small-input path with ``process_size``; docs/release.md, "Inference"), for
  numerical parity.

Small inputs: the release computes outputs whose short side is below ``process_size`` (512, the
training crop size) at that size and resizes the result back. That enlargement is bounded here:
the working area never exceeds ``MAX_WORK_AREA_FACTOR × process_size²`` unless the output itself
is larger, so thin images (1×500) do not turn into 100-megapixel working images.

`Plan` carries everything `finish` needs (sizes, mode, the low-quality input for the colour
reference, the alpha channel), so the stages can run apart (ComfyUI keeps it in the LATENT).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import PiSAError
from ..options import LATENT_FACTOR, MAX_OUTPUT_PIXELS, MAX_WORK_AREA_FACTOR, MIN_WORK_SIDE, RESAMPLING

GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601 luma, as Pillow's convert("L")


@dataclass(frozen=True)
class Plan:
    """How one batch goes from the low-quality input to the output."""

    out_size: tuple[int, int]    # final (H, W)
    work_size: tuple[int, int]   # (Hw, Ww): the enlarged input inside the padded pixels
    geometry: str = "exact"
    resampling: str = "bicubic"
    upscale: float = 4.0
    process_size: int = 512
    lq: object = None            # [B,3,h,w] in [0,1] (CPU), or a list of Pillow images; None: unknown
    alpha: torch.Tensor | None = None   # [B,1,h,w] in [0,1], upscaled on its own in finish
    gray: bool = False           # a gray input comes back gray

    @property
    def latent_size(self) -> tuple[int, int]:
        """(h, w) of the latent of the working image (padded in exact geometry; the release's is
        already a multiple of 8)."""
        pad = padded_side if self.geometry == "exact" else int
        return tuple(pad(s) // LATENT_FACTOR for s in self.work_size)

    @property
    def batch(self) -> int | None:
        return None if self.lq is None else len(self.lq)

    def select(self, index: int) -> Plan:
        """The plan of one image of the batch."""
        pick = slice(index, index + 1)
        return replace(self, lq=None if self.lq is None else self.lq[pick],
                       alpha=None if self.alpha is None else self.alpha[pick])

    def reference(self) -> torch.Tensor | None:
        """[B,3,Hw,Ww] in [0,1]: the enlarged low-quality input, the colour fix's reference. Made
        again from the input with the same resampling as in `prepare`, so the working-size pixels
        need not be kept alive from the encode to the decode."""
        if self.lq is None:
            return None
        if self.geometry == "release":
            return torch.stack([prepare_release_one(im, self.upscale, self.process_size)[0] for im in self.lq])
        return resize(self.lq, self.work_size, self.resampling)

    @classmethod
    def for_latent(cls, latent: torch.Tensor) -> Plan:
        """A plan without input: decode a latent at its own size (e.g. from ComfyUI's VAE Encode)."""
        size = (latent.shape[-2] * LATENT_FACTOR, latent.shape[-1] * LATENT_FACTOR)
        return cls(out_size=size, work_size=size)


def padded_side(side: int) -> int:
    """A working side padded to a multiple of 8 and at least 64 (the UNet's three 2x
    downsamplings need 8 latent pixels)."""
    return max(MIN_WORK_SIDE, side + (-side) % LATENT_FACTOR)


def output_size(h: int, w: int, upscale: float) -> tuple[int, int]:
    """round(upscale × size), checked against nothing and against MAX_OUTPUT_PIXELS."""
    if not (isinstance(upscale, (int, float)) and math.isfinite(upscale) and upscale > 0):
        raise PiSAError(f"upscale must be a positive finite number; got {upscale!r}.")
    out = (round(h * upscale), round(w * upscale))
    if min(out) < 1:
        raise PiSAError(f"upscale {upscale:g} turns a {w}x{h} image into nothing; use a larger factor.")
    if out[0] * out[1] > MAX_OUTPUT_PIXELS:
        raise PiSAError(f"a {w}x{h} image upscaled by {upscale:g} would be {out[1]}x{out[0]} "
                        f"({out[0] * out[1] / 2**20:.0f} MP), above the {MAX_OUTPUT_PIXELS // 2**20} MP limit; "
                        "use a smaller upscale.")
    return out


def small_input_factor(out_h: int, out_w: int, process_size: int) -> float:
    """How much the small-input rule enlarges an output of (out_h, out_w): enough for the short
    side to reach process_size, bounded so that the working area stays within
    max(output area, MAX_WORK_AREA_FACTOR × process_size²); never below 1."""
    if process_size < 0:
        raise PiSAError(f"process_size must be 0 (off) or positive; got {process_size}.")
    short = min(out_h, out_w)
    if not process_size or short >= process_size:
        return 1.0
    return max(1.0, min(process_size / short, _area_cap(out_h, out_w, process_size)))


def _area_cap(out_h: int, out_w: int, process_size: int) -> float:
    """The largest enlargement keeping out_h·out_w·f² <= MAX_WORK_AREA_FACTOR · process_size²."""
    return math.sqrt(MAX_WORK_AREA_FACTOR * process_size * process_size / (out_h * out_w))


def working_size(out_h: int, out_w: int, process_size: int) -> tuple[int, int]:
    """The size the model works at for an output of (out_h, out_w) (see small_input_factor)."""
    factor = small_input_factor(out_h, out_w, process_size)
    if factor == 1.0:
        return out_h, out_w
    return max(1, round(out_h * factor)), max(1, round(out_w * factor))


# --- resampling -----------------------------------------------------------------------------------


def resize(chw: torch.Tensor, size: tuple[int, int], method: str = "bicubic") -> torch.Tensor:
    """[B,C,H,W] in [0,1] -> [B,C,*size] with the named resampling, float32, clamped to [0,1].
    Bicubic/bilinear antialias when shrinking; lanczos is Pillow's filter on float planes."""
    if method not in RESAMPLING:
        raise PiSAError(f"resampling must be one of {', '.join(RESAMPLING)}; got {method!r}.")
    if tuple(chw.shape[-2:]) == tuple(size):
        return chw.float()
    if method == "lanczos":
        flat = chw.float().reshape(-1, 1, *chw.shape[-2:])
        out = torch.stack([_pil_resize_float(plane, size, Image.LANCZOS, clamp=False) for plane in flat])
        return out.reshape(*chw.shape[:-2], *size).clamp(0, 1)
    kwargs = {"align_corners": False} if method in ("bicubic", "bilinear") else {}
    if method in ("bicubic", "bilinear") and (size[0] < chw.shape[-2] or size[1] < chw.shape[-1]):
        kwargs["antialias"] = True
    return F.interpolate(chw.float(), size=size, mode=method, **kwargs).clamp(0, 1)


def _pil_resize_float(image: torch.Tensor, size_hw: tuple[int, int], resample: int, clamp: bool = True) -> torch.Tensor:
    """Pillow's resampling filter on float data ([C,H,W]): one 'F'-mode plane per channel. With
    clamp, horizontal pass then vertical pass, clamped to [0,1] after each like Pillow's 8-bit path
    saturates between its two passes (without its 8-bit rounding)."""
    out_h, out_w = size_hw
    planes = []
    for channel in image.detach().float().cpu().numpy():
        plane = np.ascontiguousarray(channel, dtype=np.float32)
        if not clamp:
            planes.append(np.asarray(Image.fromarray(plane).resize((out_w, out_h), resample), dtype=np.float32))
            continue
        if plane.shape[1] != out_w:
            plane = np.clip(np.asarray(Image.fromarray(plane).resize((out_w, plane.shape[0]), resample)), 0, 1)
        if plane.shape[0] != out_h:
            plane = np.clip(np.asarray(Image.fromarray(plane).resize((out_w, out_h), resample)), 0, 1)
        planes.append(np.asarray(plane, dtype=np.float32))
    return torch.from_numpy(np.stack(planes)).to(image.device)


# --- input checks and channels --------------------------------------------------------------------


def check_images(images, what: str = "images") -> torch.Tensor:
    """A batch [B,H,W,C] (C = 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA) as float32 in [0,1] on the CPU.
    Float input must lie in [0,1] (tiny excursions from resampling are clamped) and be finite;
    uint8 input is read as 0..255."""
    if not torch.is_tensor(images):
        raise PiSAError(f"{what} must be a tensor [B,H,W,C] (or a list of RGB Pillow images); "
                        f"got {type(images).__name__}.")
    if images.dim() != 4 or images.shape[-1] not in (1, 2, 3, 4):
        raise PiSAError(f"{what} must be [B,H,W,C] with C in 1..4; got shape {tuple(images.shape)}.")
    if min(images.shape[:3]) < 1:
        raise PiSAError(f"{what} is empty: shape {tuple(images.shape)}.")
    if images.dtype == torch.uint8:
        return images.detach().cpu().float().div_(255)
    if not images.is_floating_point():
        raise PiSAError(f"{what} must be float in [0, 1] (or uint8 in 0..255); got {images.dtype}.")
    data = images.detach().cpu().float()
    if not torch.isfinite(data).all():
        raise PiSAError(f"{what} contain NaN or infinite values.")
    low, high = float(data.min()), float(data.max())
    if low < -1e-3 or high > 1 + 1e-3:
        raise PiSAError(f"{what} must lie in [0, 1]; found values in [{low:.3g}, {high:.3g}] "
                        "(a [-1, 1] or 0..255 float tensor?).")
    return data.clamp_(0, 1)


def split_channels(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
    """[B,H,W,C] in [0,1] -> (rgb [B,3,H,W], alpha [B,1,H,W] or None, gray)."""
    chw = images.permute(0, 3, 1, 2)
    channels = chw.shape[1]
    gray = channels in (1, 2)
    color = chw[:, :1].expand(-1, 3, -1, -1) if gray else chw[:, :3]
    alpha = chw[:, -1:].contiguous() if channels in (2, 4) else None
    return color.contiguous(), alpha, gray


def merge_channels(out01: torch.Tensor, plan: Plan) -> torch.Tensor:
    """[B,3,H,W] -> [B,H,W,C] with the input's layout: luma for gray input, the alpha channel
    upscaled on its own (bicubic) and re-attached."""
    if plan.gray:
        weights = torch.tensor(GRAY_WEIGHTS, dtype=out01.dtype).view(1, 3, 1, 1)
        out01 = (out01 * weights).sum(dim=1, keepdim=True)
    if plan.alpha is not None:
        alpha = F.interpolate(plan.alpha, size=plan.out_size, mode="bicubic", align_corners=False, antialias=True)
        out01 = torch.cat([out01, alpha.clamp(0, 1)], dim=1)
    return out01.permute(0, 2, 3, 1).contiguous()


# --- prepare and finish ---------------------------------------------------------------------------


def prepare(images, *, upscale: float = 4.0, geometry: str = "exact", process_size: int = 512,
            resampling: str = "bicubic") -> tuple[torch.Tensor, Plan]:
    """Low-quality images -> (pixels [B,3,Hp,Wp] in [-1,1] with Hp, Wp multiples of 8, Plan).
    images: [B,H,W,C] in [0,1] (see check_images), or a list of 8-bit RGB Pillow images (the
    release geometry's exact input)."""
    if geometry not in ("exact", "release"):
        raise PiSAError(f"geometry must be exact or release; got {geometry!r}.")
    if isinstance(images, (list, tuple)):
        if not images or any(not isinstance(im, Image.Image) or im.mode != "RGB" for im in images):
            raise PiSAError("Pillow input must be a non-empty list of RGB images.")
        if geometry != "release":
            raise PiSAError("Pillow input is for geometry 'release'; pass a tensor [B,H,W,C] otherwise.")
        rgb, alpha, gray = list(images), None, False
    else:
        rgb, alpha, gray = split_channels(check_images(images))
    if geometry == "release":
        refs, sizes = zip(*(prepare_release_one(im, upscale, process_size) for im in rgb))
        pixels = torch.stack(refs).mul_(2).sub_(1)
        work = tuple(pixels.shape[-2:])
        plan = Plan(sizes[0], work, "release", "bicubic", upscale, process_size, rgb, alpha, gray)
        return pixels, plan
    out_size = output_size(rgb.shape[-2], rgb.shape[-1], upscale)
    work = working_size(*out_size, process_size)
    plan = Plan(out_size, work, "exact", resampling, float(upscale), process_size, rgb, alpha, gray)
    return pad_for_vae(plan.reference().mul_(2).sub_(1)), plan


def pad_for_vae(image: torch.Tensor) -> torch.Tensor:
    """Replicate-pad bottom/right to padded_side(); the padding is cropped away in finish."""
    h, w = image.shape[-2:]
    pad_h, pad_w = padded_side(h) - h, padded_side(w) - w
    return F.pad(image, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else image


def to_unit_range(decoded: torch.Tensor, plan: Plan) -> torch.Tensor:
    """Decoded [-1,1] padded image -> [B,3,Hw,Ww] in [0,1], float32 (the padding cropped away)."""
    work_h, work_w = plan.work_size
    return decoded[..., :work_h, :work_w].float().mul(0.5).add_(0.5).clamp_(0, 1)


def to_output_size(out01: torch.Tensor, plan: Plan) -> torch.Tensor:
    """The working-size result resized to the final size (bicubic; Pillow's in release geometry)."""
    if tuple(out01.shape[-2:]) == tuple(plan.out_size):
        return out01
    if plan.geometry == "release":
        return torch.stack([_pil_resize_float(img, plan.out_size, Image.BICUBIC) for img in out01])
    return resize(out01, plan.out_size, "bicubic")


def map_to_latent(values: torch.Tensor, plan: Plan | None, latent_hw, batch: int) -> torch.Tensor:
    """A map over the low-quality input ([h,w], [B,h,w] or [B,1,h,w], any resolution; e.g. λ of
    region-aware guidance) on the latent grid, [B or 1, 1, *latent_hw] float32: enlarged like the
    image (to the working size, padded like the pixels), then averaged over each latent pixel's
    8×8 image pixels. Without a plan the map covers the latent as it is. Values are not clamped."""
    m = values.float()
    m = m.reshape(1, 1, *m.shape) if m.dim() == 2 else m.unsqueeze(1) if m.dim() == 3 else m
    if m.shape[0] not in (1, batch):
        raise PiSAError(f"a map for {m.shape[0]} images was given for a batch of {batch}; give 1 or {batch}.")
    if plan is None:
        return F.interpolate(m, size=tuple(latent_hw), mode="area")
    shrinking = m.shape[-2] > plan.work_size[0] or m.shape[-1] > plan.work_size[1]
    m = F.interpolate(m, size=plan.work_size, mode="bilinear", align_corners=False, antialias=shrinking)
    pad_h, pad_w = (int(n) * LATENT_FACTOR - s for n, s in zip(latent_hw, plan.work_size))
    if pad_h < 0 or pad_w < 0:
        raise PiSAError(f"a map's plan has a working size of {tuple(plan.work_size)}, larger than the latent "
                        f"{tuple(latent_hw)} covers.")
    padded = F.pad(m, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else m  # as the pixels were
    return F.avg_pool2d(padded, LATENT_FACTOR)


# --- release geometry -----------------------------------------------------------------------------


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

    def resize(self, size_wh: tuple[int, int], resample: int) -> _ReleaseImage:
        if isinstance(self.image, Image.Image):
            return _ReleaseImage(self.image.resize(size_wh, resample))
        return _ReleaseImage(_pil_resize_float(self.image, (size_wh[1], size_wh[0]), resample))

    def tensor(self) -> torch.Tensor:
        if isinstance(self.image, Image.Image):
            array = np.asarray(self.image.convert("RGB"), dtype=np.float32) / 255.0
            return torch.from_numpy(array).permute(2, 0, 1).contiguous()
        return self.image.float()


def prepare_release_one(image, upscale, process_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """The release's pre-processing of one image (Pillow image or float [3,H,W]); returns the
    enlarged image [3,Hw,Ww] in [0,1] and the final size. Its small-input enlargement is bounded
    like small_input_factor's."""
    if not math.isfinite(float(upscale)) or float(upscale) != int(upscale) or upscale < 1:
        raise PiSAError(f"the release geometry needs a whole upscale factor; got {upscale}.")
    upscale = int(upscale)
    img = _ReleaseImage(image)
    ori_w, ori_h = img.size_wh
    output_size(ori_h, ori_w, upscale)
    min_side = process_size // upscale
    enlarged = ori_w < min_side or ori_h < min_side
    if enlarged:
        scale = max(1.0, min(min_side / min(ori_w, ori_h), _area_cap(ori_h * upscale, ori_w * upscale, process_size)))
        img = img.resize((int(scale * ori_w), int(scale * ori_h)), Image.BICUBIC)
    w, h = img.size_wh
    img = img.resize((w * upscale, h * upscale), Image.BICUBIC)
    w, h = img.size_wh
    new_w, new_h = w - w % LATENT_FACTOR, h - h % LATENT_FACTOR
    if new_w == 0 or new_h == 0:
        raise PiSAError(f"a {ori_w}x{ori_h} image is too small for the release geometry at x{upscale} "
                        f"with process size {process_size}; use geometry 'exact'.")
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.LANCZOS)
    out_size = (upscale * ori_h, upscale * ori_w) if enlarged else (new_h, new_w)
    return img.tensor(), out_size
