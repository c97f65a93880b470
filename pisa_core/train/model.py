"""The trainable one-step generator and the caption encoder.

Generator, as at inference (paper arXiv 2412.03017, Sec. 3; docs/release.md, "Inference"):
    z_L  = s · VAE.encode(x_LQ)      no gradient; in training a posterior sample (the release's
                                     choice, the noise acts as augmentation), else the mean
    ε    = UNet_LoRA(z_L, t = 1, caption embedding)
    z_H  = z_L − ε                   (pisa_core.inference.guidance.residual_latent)
    x_SR = clamp(VAE.decode(z_H / s), −1, 1)
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import PiSAError
from ..inference.guidance import residual_latent
from ..model.base import encode_prompts

GENERATOR_TIMESTEP = 1


class SRGenerator(nn.Module):
    """x_LQ in [-1, 1] -> (z_H scaled latent, x_SR in [-1, 1]); gradients reach only the LoRA factors."""

    def __init__(self, unet: nn.Module, vae: nn.Module, scaling_factor: float, encode_sample: bool = True):
        super().__init__()
        self.unet, self.vae = unet, vae
        self.scaling_factor = float(scaling_factor)
        self.encode_sample = encode_sample

    @property
    def weight_dtype(self) -> torch.dtype:
        return self.vae.decoder.conv_in.weight.dtype

    def encode(self, lq: torch.Tensor, rng: torch.Generator | None = None) -> torch.Tensor:
        """z_L = s · VAE.encode(x_LQ): mean + std·n with n drawn on the CPU from `rng` when sampling
        (the same draw on any device), the posterior mean without `rng` or with sampling off."""
        with torch.no_grad():
            dist = self.vae.encode(lq.to(self.weight_dtype)).latent_dist
            z = dist.mean.float()
            if self.encode_sample and rng is not None:
                noise = torch.randn(z.shape, generator=rng, dtype=torch.float32)
                z = z + dist.std.float() * noise.to(z.device)
        return z * self.scaling_factor

    def predict_eps(self, z: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        t = torch.full((1,), GENERATOR_TIMESTEP, device=z.device, dtype=torch.long)
        return self.unet(z.to(self.weight_dtype), t, encoder_hidden_states=embeds.to(self.weight_dtype),
                         return_dict=False)[0]

    def decode(self, z_h: torch.Tensor) -> torch.Tensor:
        out = self.vae.decode((z_h / self.scaling_factor).to(self.weight_dtype), return_dict=False)[0]
        return out.float().clamp(-1, 1)

    def forward(self, lq: torch.Tensor, embeds: torch.Tensor, rng: torch.Generator | None = None):
        z_l = self.encode(lq, rng)
        z_h = residual_latent(z_l, self.predict_eps(z_l, embeds).float())
        return z_h, self.decode(z_h)


class PromptEncoder:
    """Caption -> text embedding [B, 77, D] on the training device; "" uses the base model's cached
    empty-prompt embedding (the one inference uses)."""

    def __init__(self, text_encoder, tokenizer, empty_embeds: torch.Tensor, device, dtype):
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        self.empty = empty_embeds.to(device=device, dtype=dtype)
        self.device, self.dtype = device, dtype

    def can_encode_text(self) -> bool:
        return self.text_encoder is not None and self.tokenizer is not None

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        out = self.empty.expand(len(prompts), -1, -1).clone()
        todo = [i for i, p in enumerate(prompts) if p]
        if todo:
            if not self.can_encode_text():
                raise PiSAError("Captions need the base model's tokenizer and text encoder; load --base from a "
                                "diffusers folder (single-file checkpoints carry no tokenizer) or train without "
                                "captions (--null-text-ratio 1).")
            with torch.no_grad():
                embeds = encode_prompts(self.text_encoder, self.tokenizer, [prompts[i] for i in todo])
            out[todo] = embeds.to(device=self.device, dtype=self.dtype)
        return out
