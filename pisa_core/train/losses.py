"""The training losses of PiSA-SR, one small function per formula.

Paper: Sun et al., "Pixel-level and Semantic-level Adjustable Super-resolution: A Dual-LoRA
Approach" (CVPR 2025, arXiv 2412.03017), Sec. 3 (training); numbers from docs/release.md ("Training").
  pix stage: ℓ2(x_SR, x_HQ)
  sem stage: ℓ2 + λ_lpips·LPIPS(VGG) + λ_csd·ℓ_CSD  (release: λ_lpips = 2, λ_csd = 1)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def l2_loss(sr: torch.Tensor, hq: torch.Tensor) -> torch.Tensor:
    """ℓ2 on images (paper: pixel-level loss of both stages): mean squared error in [-1, 1]."""
    return F.mse_loss(sr.float(), hq.float())


def alphas_cumprod(scheduler_config: dict) -> torch.Tensor:
    """ᾱ_t of the DDPM schedule described by a diffusers scheduler config (float32, CPU)."""
    from diffusers import DDPMScheduler

    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")
    scheduler = DDPMScheduler(**{k: scheduler_config[k] for k in keys if scheduler_config.get(k) is not None})
    return scheduler.alphas_cumprod.float()


def add_noise(z0: torch.Tensor, noise: torch.Tensor, abar_t: torch.Tensor) -> torch.Tensor:
    """Forward diffusion q(z_t | z_0): z_t = sqrt(ᾱ_t) z_0 + sqrt(1 − ᾱ_t) n (ᾱ_t per sample, [B])."""
    a = abar_t.view(-1, 1, 1, 1).to(z0.dtype)
    return a.sqrt() * z0 + (1 - a).sqrt() * noise


def x0_from_eps(z_t: torch.Tensor, eps: torch.Tensor, abar_t: torch.Tensor) -> torch.Tensor:
    """x0 estimate (docs/release.md, "Training", CSD): x0(ε) = (z_t − sqrt(1 − ᾱ_t) ε) / sqrt(ᾱ_t)."""
    a = abar_t.view(-1, 1, 1, 1).to(z_t.dtype)
    return (z_t - (1 - a).sqrt() * eps) / a.sqrt()


def cfg_eps(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance (paper Sec. 3, ε_real with λ_cfg): ε_cfg = ε_uncond + λ_cfg (ε_cond − ε_uncond)."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def csd_gradient(z_h: torch.Tensor, x0_uncond: torch.Tensor, x0_cfg: torch.Tensor) -> torch.Tensor:
    """CSD gradient in latent space (paper Sec. 3, ∇ℓ_CSD with w_t; docs/release.md, "Training"): w = mean|z_H − x0(ε_cfg)| per
    sample, grad = (x0(ε_uncond) − x0(ε_cfg)) / w."""
    w = (z_h.float() - x0_cfg.float()).abs().mean(dim=(1, 2, 3), keepdim=True)
    return (x0_uncond.float() - x0_cfg.float()) / w


def csd_loss_from_gradient(z_h: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Stop-gradient surrogate (docs/release.md, "Training"): loss = mse(z_H, sg(z_H − grad)); its gradient w.r.t. z_H is
    2·grad / numel, so a descent step moves z_H along x0(ε_cfg) − x0(ε_uncond)."""
    target = (z_h.float() - grad).detach()
    return F.mse_loss(z_h.float(), target)


@dataclass
class CSDSample:
    """What one CSD evaluation used, for tests and logging."""

    timesteps: torch.Tensor
    z_t: torch.Tensor
    x0_uncond: torch.Tensor
    x0_cfg: torch.Tensor
    grad: torch.Tensor


def csd_loss(z_h: torch.Tensor, base_eps, cond_embeds: torch.Tensor, uncond_embeds: torch.Tensor,
             abar: torch.Tensor, *, t_range=(20, 500), cfg_scale: float = 7.5,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, CSDSample]:
    """Classifier score distillation loss (paper Sec. 3; docs/release.md, "Training").

    base_eps(z_t, t, embeds) runs the frozen SD UNet (no LoRA). t ~ U[t_min, t_max) per sample,
    n ~ N(0, I), z_t = add_noise(z_H, n, t); ε_uncond with the negative-prompt embedding, ε_cond with
    the image's caption (the real one even where the generator's was dropped, as released); both in
    one batch and without gradients.
    """
    b = z_h.shape[0]
    device = z_h.device
    t = torch.randint(int(t_range[0]), int(t_range[1]), (b,), generator=generator).to(device)
    noise = torch.randn(z_h.shape, generator=generator, dtype=torch.float32).to(device)
    abar_t = abar.to(device)[t]
    with torch.no_grad():
        z0 = z_h.detach().float()
        z_t = add_noise(z0, noise, abar_t)
        eps = base_eps(torch.cat([z_t, z_t]), torch.cat([t, t]), torch.cat([uncond_embeds, cond_embeds])).float()
        eps_uncond, eps_cond = eps.chunk(2)
        x0_uncond = x0_from_eps(z_t, eps_uncond, abar_t)
        x0_cfg = x0_from_eps(z_t, cfg_eps(eps_uncond, eps_cond, cfg_scale), abar_t)
        grad = torch.nan_to_num(csd_gradient(z0, x0_uncond, x0_cfg))
    loss = csd_loss_from_gradient(z_h, grad)
    return loss, CSDSample(t, z_t, x0_uncond, x0_cfg, grad)
