"""Dual-LoRA guidance: the formulas of PiSA-SR inference and the planning of UNet passes.

Notation of the paper (arXiv 2412.03017, Sec. 3): ε_pix is the UNet output with the pixel LoRA
only, ε_PiSA with the pixel and the semantic LoRA. Both are predicted once per latent; every
(λ_pix, λ_sem) is then a linear combination of the two, with no further UNet pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import PiSAError
from ..options import LAMBDA_LIMIT

PIX = "pix"
PISA = "pisa"


def dual_guidance(eps_pix: torch.Tensor, eps_pisa: torch.Tensor, lambda_pix: float, lambda_sem: float) -> torch.Tensor:
    """The paper's adjustable inference (Sec. 3, Fig. 3(b)):
    ε = λ_pix · ε_pix + λ_sem · (ε_PiSA − ε_pix)."""
    return lambda_pix * eps_pix + lambda_sem * (eps_pisa - eps_pix)


def residual_latent(z_lq: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The paper's residual formulation (Sec. 3): z_H = z_L − λ·ε_θ(z_L), here with λ already
    folded into ε."""
    return z_lq - eps


Lambda = float | torch.Tensor  # a guidance scale: one number, or a map of them (region-aware guidance)


@dataclass(frozen=True)
class PassPlan:
    """Which ε a (λ_pix, λ_sem) pair needs, and how to combine them. A λ is a number or a map
    [B,1,h,w] on the latent grid; constant maps have been turned into numbers."""

    lambda_pix: Lambda
    lambda_sem: Lambda
    branches: tuple[str, ...]

    def combine(self, eps: dict[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        """ε for this plan from the predicted branches (`like` gives shape/device when no pass runs)."""
        if not self.branches:
            return torch.zeros_like(like)
        if self.branches == (PIX,):
            return self.lambda_pix * eps[PIX]
        if self.branches == (PISA,):
            return self.lambda_pix * eps[PISA]
        return dual_guidance(eps[PIX], eps[PISA], self.lambda_pix, self.lambda_sem)


def check_lambda(value, name: str) -> Lambda:
    """A guidance scale must be a finite number within ±LAMBDA_LIMIT, or a float tensor of such
    numbers shaped [h,w], [B,h,w] or [B,1,h,w] (NaN, ±inf or an absurd λ would give a NaN or noise
    image after minutes of work). A constant map becomes its number."""
    limit = LAMBDA_LIMIT
    if torch.is_tensor(value):
        if not value.is_floating_point() or value.dim() not in (2, 3, 4) or (value.dim() == 4 and value.shape[1] != 1) \
                or value.numel() == 0:
            raise PiSAError(f"{name} as a map must be a float tensor [h,w], [B,h,w] or [B,1,h,w]; got "
                            f"{value.dtype} {tuple(value.shape)}.")
        if value.is_meta:
            return value.float()
        if not torch.isfinite(value).all():
            raise PiSAError(f"{name} map contains NaN or infinite values.")
        if value.abs().max() > limit:
            raise PiSAError(f"{name} map values must lie between {-limit:g} and {limit:g} (the paper uses 0 to 1.5); "
                            f"got {describe_lambda(value)}.")
        if value.min() == value.max():
            return float(value.flatten()[0])
        return value.float()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PiSAError(f"{name} must be a finite number or a map of them; got {value!r}.")
    if abs(value) > limit:
        raise PiSAError(f"{name} must be between {-limit:g} and {limit:g} (the paper uses 0 to 1.5); got {value:g}.")
    return float(value)


def describe_lambda(value: Lambda) -> str:
    """A λ for a message: the number, or a map's range."""
    if torch.is_tensor(value):
        if value.is_meta:
            return f"map {tuple(value.shape)}"
        return f"map {value.min().item():g} to {value.max().item():g}"
    return f"{value:g}"


def masked_lambda(outside: float, inside: float, mask: torch.Tensor | None) -> Lambda:
    """Region-aware guidance from a mask in [0, 1]: `inside` where the mask is 1, `outside` where
    it is 0, blended linearly in between (soft masks)."""
    if mask is None:
        return outside
    mask = mask.float().clamp(0, 1)
    return (1 - mask) * outside + mask * inside  # exactly `inside` at 1 and `outside` at 0


def plan_passes(lambda_pix: Lambda, lambda_sem: Lambda) -> PassPlan:
    """Which UNet passes a (λ_pix, λ_sem) pair needs:
    λ_pix = λ_sem = 0 → no pass (ε = 0);
    λ_sem = 0 → one pass, λ_pix · ε_pix;
    λ_pix = λ_sem = λ → one pass, λ · ε_PiSA (the release's default when λ = 1);
    otherwise, and whenever a λ varies over the image, both passes."""
    lambda_pix, lambda_sem = check_lambda(lambda_pix, "lambda_pix"), check_lambda(lambda_sem, "lambda_sem")
    if torch.is_tensor(lambda_pix) or torch.is_tensor(lambda_sem):
        branches: tuple[str, ...] = (PIX, PISA)
    elif lambda_pix == 0.0 and lambda_sem == 0.0:
        branches = ()
    elif lambda_sem == 0.0:
        branches = (PIX,)
    elif lambda_pix == lambda_sem:
        branches = (PISA,)
    else:
        branches = (PIX, PISA)
    return PassPlan(lambda_pix, lambda_sem, branches)
