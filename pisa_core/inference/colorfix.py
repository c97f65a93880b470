"""Colour correction of the super-resolved image against the enlarged LQ image: AdaIN and wavelet
(docs/release.md, "Colour fix") and mean/std matching in CIELAB (docs/images.md, "Colour fix").

Works on float tensors [B, C, H, W] in [0, 1], any channel count (lab: gray or RGB, then alpha),
each batch image on its own, computed in float32 and clamped to [0, 1]. The release converts to
8-bit PIL images around these steps; we keep full precision.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import PiSAError
from ..files.colorspace import gray_to_lightness, lab_to_xyz, lightness_to_gray, srgb_to_xyz, xyz_to_lab, xyz_to_srgb
from ..options import COLOR_FIXES as MODES

ADAIN_EPS = 1e-5
WAVELET_LEVELS = 5


def _check_pair(image, reference, what: str) -> None:
    for name, t in (("image", image), ("reference", reference)):
        if not isinstance(t, torch.Tensor) or t.ndim != 4:
            found = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise PiSAError(f"{what}: the {name} must be a 4-D tensor [B, C, H, W], found {found}.")
    if image.shape != reference.shape:
        raise PiSAError(f"{what}: the image and the colour reference must have the same shape, "
                        f"found {tuple(image.shape)} and {tuple(reference.shape)}.")


def channel_mean_std(x: torch.Tensor, eps: float = ADAIN_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and channel mean and std = sqrt(unbiased variance + eps) (the release's AdaIN).

    A one-pixel image has no unbiased variance; its variance is taken as 0.
    """
    flat = x.flatten(2)
    correction = 1 if flat.shape[-1] > 1 else 0
    var = flat.var(dim=-1, correction=correction) + eps
    return flat.mean(dim=-1)[..., None, None], var.sqrt()[..., None, None]


def adain_color_fix(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """AdaIN: (image - mean_image) / std_image * std_ref + mean_ref per image and channel, clamped to [0, 1]."""
    _check_pair(image, reference, "AdaIN colour fix")
    return match_mean_std(image.float(), reference.float()).clamp_(0.0, 1.0)


def wavelet_blur(x: torch.Tensor, dilation: int) -> torch.Tensor:
    """One a-trous level: the 3x3 kernel [[1,2,1],[2,4,2],[1,2,1]]/16 at `dilation`, replicate
    padding of `dilation`, applied to every channel separately (the release's wavelet fix)."""
    c = x.shape[1]
    k1 = torch.tensor([0.25, 0.5, 0.25], dtype=x.dtype, device=x.device)
    kernel = (k1[:, None] * k1[None, :]).expand(c, 1, 3, 3)
    padded = F.pad(x, (dilation,) * 4, mode="replicate")
    return F.conv2d(padded, kernel, groups=c, dilation=dilation)


def wavelet_decompose(x: torch.Tensor, levels: int = WAVELET_LEVELS) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low): level i (0-based) blurs at dilation 2**i; high accumulates x - blur(x) and x
    becomes the blurred image; low is the final blurred image, so high + low = x."""
    high = torch.zeros_like(x)
    for i in range(levels):
        low = wavelet_blur(x, 2 ** i)
        high += x - low
        x = low
    return high, x


def wavelet_color_fix(image: torch.Tensor, reference: torch.Tensor, levels: int = WAVELET_LEVELS) -> torch.Tensor:
    """The image's high-frequency bands plus the reference's low-frequency band, clamped to [0, 1]."""
    _check_pair(image, reference, "wavelet colour fix")
    if int(levels) != levels or levels < 1:
        raise PiSAError(f"wavelet colour fix: levels must be a positive integer, found {levels!r}.")
    high, _ = wavelet_decompose(image.float(), levels)
    _, low = wavelet_decompose(reference.float(), levels)
    return (high + low).clamp_(0.0, 1.0)


def match_mean_std(x: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """(x - mean_x) / std_x * std_ref + mean_ref per image and channel (channel_mean_std)."""
    mean_x, std_x = channel_mean_std(x)
    mean_r, std_r = channel_mean_std(reference)
    return (x - mean_x) / std_x * std_r + mean_r


def lab_color_fix(image: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Mean and standard deviation of L*, a* and b* matched to the reference's, per image:
    sRGB -> linear -> XYZ (D65) -> CIELAB (colorspace.py), match_mean_std, and back, clamped to
    [0, 1]. C = 3 is RGB; C = 1 is gray (L* only, a* = b* = 0); a 2nd or 4th channel (alpha)
    keeps the image's values."""
    _check_pair(image, reference, "LAB colour fix")
    image, reference = image.float(), reference.float()
    colour = {1: 1, 2: 1, 3: 3, 4: 3}.get(image.shape[1])
    if colour is None:
        raise PiSAError(f"LAB colour fix: expected 1 to 4 channels (gray or RGB, then alpha), found {image.shape[1]}.")
    rgb, ref = image[:, :colour].clamp(0, 1), reference[:, :colour].clamp(0, 1)
    if colour == 1:
        fixed = lightness_to_gray(match_mean_std(gray_to_lightness(rgb), gray_to_lightness(ref)))
    else:
        lab = match_mean_std(xyz_to_lab(srgb_to_xyz(rgb)), xyz_to_lab(srgb_to_xyz(ref)))
        fixed = xyz_to_srgb(lab_to_xyz(lab))
    return torch.cat([fixed, image[:, colour:]], dim=1).clamp_(0.0, 1.0)


def apply_color_fix(image: torch.Tensor, reference: torch.Tensor | None, mode: str) -> torch.Tensor:
    """Dispatch on mode: "adain" | "wavelet" | "lab" | "none" (the image unchanged; reference may be None)."""
    key = mode.strip().lower() if isinstance(mode, str) else mode
    if key == "none":
        return image
    if key == "adain":
        return adain_color_fix(image, reference)
    if key == "wavelet":
        return wavelet_color_fix(image, reference)
    if key == "lab":
        return lab_color_fix(image, reference)
    raise PiSAError(f"colour fix: mode must be one of {', '.join(MODES)}, found {mode!r}.")
