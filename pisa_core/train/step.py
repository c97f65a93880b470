"""One optimiser step of PiSA-SR training (either stage), and how its parts are built.

The step takes the batch as the data loader hands it over (on the CPU) and runs wherever the
model is; it never reads a tensor's value (no float(), no .item()), so it runs with the model on
PyTorch's meta device too. Logging, checkpoints and validation stay in the Trainer.

Recipe (paper arXiv 2412.03017, Sec. 3; docs/release.md, "Training"): the generator gets the
caption or, after null-text dropout, the empty prompt; the CSD conditional branch gets the image's
own caption either way (unless --csd-caption generator).
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch

from ..errors import PiSAError
from ..model.checkpoint import PiSAWeights
from .config import TrainConfig
from .lora import UNetLoRA, install_lora
from .losses import alphas_cumprod, csd_loss, l2_loss
from .lpips import load_lpips
from .model import PromptEncoder, SRGenerator


def seed_for(*parts: int) -> int:
    """A 32-bit seed mixed from several integers (seed, stream, process index)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1, np.uint32)[0])


def caption_prompts(captions: list[str], suffix: str) -> list[str]:
    """Each image's own caption as a prompt: `suffix` appended to a non-empty caption (the release
    appends ", " to every tag caption; docs/release.md, "Training"); no caption stays ""."""
    return [caption + suffix if caption else "" for caption in captions]


def generator_prompts(captions: list[str], dropped: list[bool]) -> list[str]:
    """The generator's prompts: the caption prompt, or "" where null-text dropout dropped it."""
    return ["" if drop else caption for caption, drop in zip(captions, dropped)]


class TrainingStep:
    """Forward of the generator, the losses, backward, clipping and the optimiser step."""

    def __init__(self, config: TrainConfig, *, generator: SRGenerator, lora: UNetLoRA, prompts: PromptEncoder,
                 negative_embeds: torch.Tensor | None, lpips, abar: torch.Tensor, rng: torch.Generator,
                 accelerator, optimizer, scheduler):
        self.config = config
        self.generator = generator
        self.model = generator  # the Trainer puts accelerate's (DDP) wrapper here
        self.lora, self.prompts, self.negative_embeds, self.lpips = lora, prompts, negative_embeds, lpips
        self.abar, self.rng, self.accelerator = abar, rng, accelerator
        self.optimizer, self.scheduler = optimizer, scheduler
        self.params = lora.parameters(config.stage)

    @property
    def device(self) -> torch.device:
        return next(self.generator.unet.parameters()).device

    def base_eps(self, z_t: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        """ε of the frozen SD UNet: the generator's weights with every LoRA switched off."""
        unet, dtype = self.generator.unet, self.generator.weight_dtype
        with self.lora.base_unet():
            return unet(z_t.to(dtype), t, encoder_hidden_states=embeds.to(dtype), return_dict=False)[0]

    def losses(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """(weighted total, {name: loss}) of one micro-batch."""
        cfg, device = self.config, self.device
        lq = batch["lq"].to(device, non_blocking=True) * 2 - 1
        hq = batch["hq"].to(device, non_blocking=True) * 2 - 1
        captions = caption_prompts(batch["caption"], cfg.caption_suffix)
        prompts = generator_prompts(captions, batch["drop_caption"])
        embeds = self.prompts(prompts)
        z_h, sr = self.model(lq, embeds, self.rng)
        parts = {"l2": l2_loss(sr, hq)}
        total = cfg.lambda_l2 * parts["l2"]
        if self.lpips is not None:
            parts["lpips"] = self.lpips(sr, hq).mean()
            total = total + cfg.lambda_lpips * parts["lpips"]
        if self.negative_embeds is not None:
            csd_prompts = prompts if cfg.csd_caption == "generator" else captions
            cond = embeds if csd_prompts == prompts else self.prompts(csd_prompts)
            parts["csd"], _ = csd_loss(
                z_h, self.base_eps, cond, self.negative_embeds.expand(z_h.shape[0], -1, -1), self.abar,
                t_range=(cfg.csd_t_min, cfg.csd_t_max), cfg_scale=cfg.cfg_scale, generator=self.rng)
            total = total + cfg.lambda_csd * parts["csd"]
        parts["loss"] = total
        return total, parts

    def __call__(self, batches: list[dict]) -> list[dict]:
        """One optimiser step over the micro-batches (gradient accumulation); returns each
        micro-batch's loss parts, detached (the caller reads their values for logging)."""
        acc, last = self.accelerator, len(batches) - 1
        logged = []
        for micro, batch in enumerate(batches):
            # DDP averages gradients once, on the last micro-batch
            with acc.no_sync(self.model) if micro < last else nullcontext():
                with acc.autocast():
                    loss, parts = self.losses(batch)
                acc.backward(loss / len(batches))
            logged.append({k: v.detach() for k, v in parts.items()})
        if self.config.max_grad_norm > 0:
            acc.clip_grad_norm_(self.params, self.config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return logged


def build_step(cfg: TrainConfig, base, init: PiSAWeights | None, accelerator, device,
               weight_dtype: torch.dtype) -> TrainingStep:
    """The step's parts from a resolved config and a loaded base model (consumed: its UNet gets the
    LoRAs), placed on `device` with frozen weights in `weight_dtype`; not yet accelerate-prepared."""
    ranks = {"pix": cfg.rank_pix, "sem": cfg.rank_sem}
    alphas = {"pix": cfg.alpha_pix, "sem": cfg.alpha_sem}
    lora = install_lora(base.unet, ranks, alphas, init=cfg.lora_init, seed=cfg.seed)
    if init is not None:
        lora.load_family("pix", init.pix, cfg.init)
        if cfg.stage == "sem" and cfg.init_sem:
            lora.load_family("sem", init.sem, cfg.init)
    lora.set_trainable(cfg.stage)
    lora.set_active(pix=True, sem=cfg.stage == "sem")
    lora.place(device, weight_dtype)
    vae = base.vae.to(device, weight_dtype)
    if cfg.gradient_checkpointing:
        base.unet.enable_gradient_checkpointing()
        vae.enable_gradient_checkpointing()
    generator = SRGenerator(base.unet, vae, base.scaling_factor, cfg.encode_sample)

    text_encoder = base.text_encoder.to(device, weight_dtype) if base.text_encoder is not None else None
    prompts = PromptEncoder(text_encoder, base.tokenizer, base.prompt_embeds, device, weight_dtype)
    negative_embeds = None
    if cfg.lambda_csd > 0:
        if not prompts.can_encode_text():
            raise PiSAError(f"The CSD loss needs the tokenizer of '{cfg.base}' for its negative prompt; use a "
                            f"diffusers folder as --base, or --lambda-csd 0.")
        negative_embeds = prompts([cfg.negative_prompt])
    lpips = load_lpips(cfg.lpips_weights, device=device, dtype=weight_dtype) if cfg.lambda_lpips > 0 else None

    # AdamW on the trained family only: a frozen LoRA never moves (the release's optimiser also
    # holds the frozen pix LoRA, which its weight decay shrinks)
    optimizer = torch.optim.AdamW(lora.parameters(cfg.stage), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = max(0, cfg.lr_warmup_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    rng = torch.Generator().manual_seed(seed_for(cfg.seed, 7, accelerator.process_index))
    return TrainingStep(cfg, generator=generator, lora=lora, prompts=prompts, negative_embeds=negative_embeds,
                        lpips=lpips, abar=alphas_cumprod(base.scheduler_config), rng=rng, accelerator=accelerator,
                        optimizer=optimizer, scheduler=scheduler)
