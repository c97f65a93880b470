"""Dual-LoRA guidance: the formulas of PiSA-SR inference and the planning of UNet passes.

Notation of the paper: ε_pix is the UNet output with the pixel LoRA only, ε_PiSA with the pixel
and the semantic LoRA. Both are predicted once per latent; every (λ_pix, λ_sem) is then a linear
combination of the two, with no further UNet pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PIX = "pix"
PISA = "pisa"


def dual_guidance(eps_pix: torch.Tensor, eps_pisa: torch.Tensor, lambda_pix: float, lambda_sem: float) -> torch.Tensor:
    """Paper, inference with pixel/semantic guidance:
    ε = λ_pix · ε_pix + λ_sem · (ε_PiSA − ε_pix)."""
    return lambda_pix * eps_pix + lambda_sem * (eps_pisa - eps_pix)


def residual_latent(z_lq: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Paper, one-step residual formulation: z_H = z_L − ε (λ already folded into ε)."""
    return z_lq - eps


@dataclass(frozen=True)
class PassPlan:
    """Which ε a (λ_pix, λ_sem) pair needs, and how to combine them."""

    lambda_pix: float
    lambda_sem: float
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


def plan_passes(lambda_pix: float, lambda_sem: float) -> PassPlan:
    """The contract of DESIGN.md:
    λ_pix = λ_sem = 0 → no pass (ε = 0);
    λ_sem = 0 → one pass, λ_pix · ε_pix;
    λ_pix = λ_sem = λ → one pass, λ · ε_PiSA (the release's default when λ = 1);
    otherwise both passes."""
    lambda_pix, lambda_sem = float(lambda_pix), float(lambda_sem)
    if lambda_pix == 0.0 and lambda_sem == 0.0:
        branches: tuple[str, ...] = ()
    elif lambda_sem == 0.0:
        branches = (PIX,)
    elif lambda_pix == lambda_sem:
        branches = (PISA,)
    else:
        branches = (PIX, PISA)
    return PassPlan(lambda_pix, lambda_sem, branches)
