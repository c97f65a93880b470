"""The training loop of both stages (accelerate: one device, or DDP under `accelerate launch`).

Stage pix: pixel LoRA trained, loss λ_l2·ℓ2 (+ optional LPIPS/CSD).
Stage sem: pixel LoRA from --init, active and frozen; semantic LoRA trained with
           λ_l2·ℓ2 + λ_lpips·LPIPS + λ_csd·CSD (release 1 / 2 / 1).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..base_model import load_base_model
from ..checkpoint import PiSAWeights, check_compatible, load_pisa_weights
from ..errors import PiSAError
from ..image_io import write_image
from .config import TrainConfig
from .data import PairDataset, PositionSampler, build_items, collate
from .degradation import DegradationConfig
from .lora import UNetLoRA, install_lora, zero_family
from .losses import alphas_cumprod, csd_loss, l2_loss
from .lpips import check_lpips_files, load_lpips
from .model import PromptEncoder, SRGenerator
from .state import (
    checkpoint_stem,
    find_latest_state,
    load_rng,
    load_train_state,
    restore_rng,
    save_rng,
    save_train_state,
    state_dir,
    write_weights,
)

WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_mixed_precision(cfg: TrainConfig, on_gpu: bool) -> str:
    """'auto': fp16 on GPUs (the release), full precision on the CPU."""
    if cfg.mixed_precision == "auto":
        return "fp16" if on_gpu else "no"
    if cfg.mixed_precision == "fp16" and not on_gpu:
        raise PiSAError("--mixed-precision fp16 needs a GPU; use 'no' or 'bf16' on the CPU.")
    return cfg.mixed_precision


def resolve_trackers(report_to: str):
    if report_to == "none":
        return None
    if report_to == "auto":
        found = importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX")
        return "tensorboard" if found else None
    return report_to


def _seed_for(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1, np.uint32)[0])


def _worker_init(_):
    torch.set_num_threads(1)  # degradation in many workers; no thread oversubscription


class Trainer:
    """Builds everything from a TrainConfig; `run()` trains and returns the final weights path."""

    def __init__(self, config: TrainConfig):
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        cfg = config.resolved()
        if cfg.lambda_lpips > 0:  # fail before the minutes of model loading
            check_lpips_files(cfg.lpips_weights)
        self.output_dir = Path(cfg.output_dir)
        if cfg.device.startswith("cuda:") and torch.cuda.is_available():
            torch.cuda.set_device(torch.device(cfg.device))
        if cfg.device.startswith("cuda") and not torch.cuda.is_available():
            raise PiSAError(f"--device {cfg.device} was asked for, but torch sees no CUDA GPU; use --device cpu.")
        on_gpu = cfg.device != "cpu" and torch.cuda.is_available()
        mixed = resolve_mixed_precision(cfg, on_gpu)
        self.accelerator = Accelerator(
            cpu=not on_gpu, mixed_precision=mixed, log_with=resolve_trackers(cfg.report_to),
            project_config=ProjectConfiguration(project_dir=str(self.output_dir),
                                                 logging_dir=str(self.output_dir / "logs")),
        )
        acc = self.accelerator
        self.device = acc.device
        self.weight_dtype = WEIGHT_DTYPES[mixed] if on_gpu or mixed == "bf16" else torch.float32
        self.resume_from = self._resume_folder(cfg)

        # data first: a bad folder fails before minutes of model loading
        items = build_items(cfg.data, cfg.lq_data, cfg.captions)
        needs_text = cfg.lambda_csd > 0 or (cfg.null_text_ratio < 1 and any(i.caption for i in items))

        # frozen base model (text encoder kept only for captions and the CSD negative prompt)
        base = load_base_model(cfg.base, device="cpu", dtype=torch.float32, keep_text_encoder=needs_text)
        self.scaling_factor = base.scaling_factor
        self.abar = alphas_cumprod(base.scheduler_config)
        init = load_pisa_weights(cfg.init) if cfg.init else None
        if init is not None:
            check_compatible(init, base.unet, cfg.init)
            cfg = self._ranks_from_init(cfg, init)
        self.config = cfg
        self.config_json = cfg.to_json()

        unet = base.unet.to(self.device, self.weight_dtype)
        vae = base.vae.to(self.device, self.weight_dtype)
        ranks = {"pix": cfg.rank_pix, "sem": cfg.rank_sem}
        alphas = {"pix": cfg.alpha_pix, "sem": cfg.alpha_sem}
        self.lora: UNetLoRA = install_lora(unet, ranks, alphas, seed=cfg.seed)
        if init is not None:
            self.lora.load_family("pix", init.pix, cfg.init)
            if cfg.stage == "sem" and cfg.init_sem:
                self.lora.load_family("sem", init.sem, cfg.init)
        self.lora.set_trainable(cfg.stage)
        self.lora.set_active(pix=True, sem=cfg.stage == "sem")
        if cfg.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
            vae.enable_gradient_checkpointing()
        self.generator_module = SRGenerator(unet, vae, self.scaling_factor, cfg.encode_sample)

        text_encoder = base.text_encoder.to(self.device, self.weight_dtype) if base.text_encoder is not None else None
        self.prompts = PromptEncoder(text_encoder, base.tokenizer, base.prompt_embeds, self.device, self.weight_dtype)
        self.negative_embeds = None
        if cfg.lambda_csd > 0:
            if not self.prompts.can_encode_text():
                raise PiSAError(f"The CSD loss needs the tokenizer of '{cfg.base}' for its negative prompt; use a "
                                f"diffusers folder as --base, or --lambda-csd 0.")
            self.negative_embeds = self.prompts([cfg.negative_prompt])
        self.lpips = None
        if cfg.lambda_lpips > 0:
            self.lpips = load_lpips(cfg.lpips_weights, device=self.device, dtype=self.weight_dtype)

        # optimizer, LR schedule (constant after an optional linear warm-up)
        self.params = self.lora.parameters(cfg.stage)
        optimizer = torch.optim.AdamW(self.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        warmup = max(0, cfg.lr_warmup_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
        self.model, self.optimizer = acc.prepare(self.generator_module, optimizer)
        self.rng = torch.Generator().manual_seed(_seed_for(cfg.seed, 7, acc.process_index))

        # data
        self.dataset = PairDataset(items, crop_size=cfg.crop_size, seed=cfg.seed, hflip=cfg.hflip, vflip=cfg.vflip,
                                   null_text_ratio=cfg.null_text_ratio, degradation=DegradationConfig())
        self.start_step = 0
        if self.resume_from is not None:
            self._load_state(self.resume_from)

    # ------------------------------------------------------------------ setup helpers

    def _resume_folder(self, cfg: TrainConfig) -> Path | None:
        if not cfg.resume:
            return None
        if cfg.resume == "latest":
            found = find_latest_state(cfg.output_dir)
            if found is None:
                if cfg.stage == "sem" and not cfg.init:
                    raise PiSAError(f"--resume latest found no state in '{cfg.output_dir}/checkpoints', and "
                                    f"--stage sem without a state needs --init <pix checkpoint>.")
                self.accelerator.print(f"pisa-sr train: no state in {cfg.output_dir}/checkpoints; starting fresh.")
            return found
        return Path(cfg.resume)

    def _ranks_from_init(self, cfg: TrainConfig, init: PiSAWeights) -> TrainConfig:
        """The pix LoRA (and the sem one with --init-sem) keep the rank/alpha of the --init file."""
        changes = {"rank_pix": init.pix.rank, "alpha_pix": init.pix.alpha}
        if cfg.stage == "sem" and cfg.init_sem:
            changes.update(rank_sem=init.sem.rank, alpha_sem=init.sem.alpha)
        return dataclasses.replace(cfg, **changes)

    def _load_state(self, folder: Path) -> None:
        state = load_train_state(folder)
        if state["stage"] != self.config.stage:
            raise PiSAError(f"Resume state '{folder}' is from stage {state['stage']!r}, not {self.config.stage!r}.")
        for family in ("pix", "sem"):
            factors = state["lora"][family]
            if set(factors) != set(self.lora.layers):
                raise PiSAError(f"Resume state '{folder}' has {family} LoRA modules that do not match this UNet.")
            with torch.no_grad():
                for name, layer in self.lora.layers.items():
                    branch = layer.branches[family]
                    if factors[name]["A"].shape != branch.A.shape or factors[name]["B"].shape != branch.B.shape:
                        raise PiSAError(f"Resume state '{folder}': the {family} LoRA of '{name}' has rank "
                                        f"{factors[name]['A'].shape[0]}, this run {branch.A.shape[0]} "
                                        f"(keep --rank-{family} as in the interrupted run).")
                    layer.branches[family].A.copy_(factors[name]["A"])
                    layer.branches[family].B.copy_(factors[name]["B"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(state["scaler"])
        snap = load_rng(folder, self.accelerator.process_index)
        if snap is not None:
            restore_rng(snap, self.rng)
        self.start_step = int(state["step"])
        self.accelerator.print(f"pisa-sr train: resumed from {folder} at step {self.start_step}.")

    def _loader(self, start_step: int) -> DataLoader:
        cfg, acc = self.config, self.accelerator
        sampler = PositionSampler(cfg.batch_size, acc.process_index, acc.num_processes,
                                  start_chunk=start_step * cfg.gradient_accumulation_steps)
        workers = max(0, cfg.num_workers)
        return DataLoader(self.dataset, batch_size=cfg.batch_size, sampler=sampler, num_workers=workers,
                          collate_fn=collate, pin_memory=self.device.type == "cuda", worker_init_fn=_worker_init,
                          persistent_workers=workers > 0, prefetch_factor=4 if workers else None)

    # ------------------------------------------------------------------ losses

    def base_eps(self, z_t: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        """ε of the frozen SD UNet: the same weights with every LoRA branch switched off."""
        unet = self.generator_module.unet
        with self.lora.switched(pix=False, sem=False):
            return unet(z_t.to(self.weight_dtype), t, encoder_hidden_states=embeds.to(self.weight_dtype),
                        return_dict=False)[0]

    def compute_losses(self, batch: dict) -> tuple[torch.Tensor, dict]:
        cfg = self.config
        lq = batch["lq"].to(self.device, non_blocking=True) * 2 - 1
        hq = batch["hq"].to(self.device, non_blocking=True) * 2 - 1
        embeds = self.prompts(batch["caption"])
        noise = None
        if cfg.encode_sample:
            shape = (lq.shape[0], 4, lq.shape[2] // 8, lq.shape[3] // 8)
            noise = torch.randn(shape, generator=self.rng)
        z_h, sr = self.model(lq, embeds, noise)
        parts = {"l2": l2_loss(sr, hq)}
        total = cfg.lambda_l2 * parts["l2"]
        if self.lpips is not None:
            parts["lpips"] = self.lpips(sr, hq).mean()
            total = total + cfg.lambda_lpips * parts["lpips"]
        if self.negative_embeds is not None:
            parts["csd"], _ = csd_loss(
                z_h, self.base_eps, embeds, self.negative_embeds.expand(z_h.shape[0], -1, -1), self.abar,
                t_range=(cfg.csd_t_min, cfg.csd_t_max), cfg_scale=cfg.cfg_scale, generator=self.rng)
            total = total + cfg.lambda_csd * parts["csd"]
        parts["loss"] = total
        return total, parts

    # ------------------------------------------------------------------ outputs

    def weights(self) -> PiSAWeights:
        """Both adapters; in the pix stage the sem family is written as zeros (no effect)."""
        pix = self.lora.family("pix")
        sem = self.lora.family("sem") if self.config.stage == "sem" else zero_family(self.lora.family("sem"))
        return PiSAWeights(pix=pix, sem=sem, format="pisa-safetensors", source=None)

    def save(self, step: int, final: bool = False) -> Path | None:
        """Weights + config (main process) and the resumable state (every process)."""
        acc = self.accelerator
        acc.wait_for_everyone()
        folder = state_dir(self.output_dir, step)
        path = None
        if acc.is_main_process:
            factors = {f: {n: {"A": layer.branches[f].A.detach().cpu().clone(),
                               "B": layer.branches[f].B.detach().cpu().clone()}
                           for n, layer in self.lora.layers.items()} for f in ("pix", "sem")}
            save_train_state(folder, step=step, stage=self.config.stage, config_json=self.config_json,
                             lora_factors=factors, optimizer=self.optimizer, scheduler=self.scheduler,
                             scaler=acc.scaler)
            path = write_weights(self.weights(), checkpoint_stem(self.output_dir, self.config.stage, step),
                                 self.config_json, step)
            if final:
                path = write_weights(self.weights(), checkpoint_stem(self.output_dir, self.config.stage, None),
                                     self.config_json, step)
        acc.wait_for_everyone()
        save_rng(folder, acc.process_index, self.rng)
        acc.wait_for_everyone()
        return path

    @torch.no_grad()
    def validate(self, step: int) -> Path | None:
        """LQ | SR | HQ rows for the first val_count images (centre crops, empty prompt as at inference)."""
        if not self.accelerator.is_main_process or self.config.val_count < 1:
            return None
        samples = [self.dataset.validation_sample(i) for i in range(self.config.val_count)]
        batch = collate(samples)
        lq = batch["lq"].to(self.device) * 2 - 1
        with self.accelerator.autocast():
            _, sr = self.generator_module(lq, self.prompts([""] * len(samples)))
        sr01 = (sr.float().cpu() * 0.5 + 0.5).clamp(0, 1)
        rows = [torch.cat([batch["lq"][i], sr01[i], batch["hq"][i]], dim=-1) for i in range(len(samples))]
        grid = torch.cat(rows, dim=-2)
        path = self.output_dir / "validation" / f"step{step:06d}.png"
        write_image(path, grid.permute(1, 2, 0))
        psnr = -10 * torch.log10(((sr01 - batch["hq"]) ** 2).mean().clamp_min(1e-10))
        self.accelerator.log({"val/psnr": float(psnr)}, step=step)
        for tracker in self.accelerator.trackers:
            if tracker.name == "tensorboard":
                tracker.log_images({"validation": grid[None].numpy()}, step=step, dataformats="NCHW")
        return path

    # ------------------------------------------------------------------ loop

    def run(self) -> Path:
        from tqdm.auto import tqdm

        cfg, acc = self.config, self.accelerator
        acc.print(f"pisa-sr train: stage {cfg.stage}, {len(self.dataset)} images, {acc.num_processes} process(es) "
                  f"on {self.device}, base weights {self.weight_dtype}, mixed precision {acc.mixed_precision}\n"
                  f"{cfg.describe()}")
        if acc.is_main_process:
            cfg.save(self.output_dir / "config.json")
        acc.init_trackers(f"pisa-sr-{cfg.stage}", config={k: (v if isinstance(v, (int, float, str, bool)) else
                                                              json.dumps(v)) for k, v in dataclasses.asdict(cfg).items()})
        log_path = self.output_dir / "train_log.jsonl"
        accum = cfg.gradient_accumulation_steps
        batches = iter(self._loader(self.start_step))
        bar = tqdm(total=cfg.max_steps, initial=self.start_step, disable=not acc.is_local_main_process,
                   desc=f"pisa-sr {cfg.stage}", unit="step", dynamic_ncols=True)
        self.model.train()
        final_path = None
        step = self.start_step
        tic = time.perf_counter()
        while step < cfg.max_steps:
            sums: dict[str, float] = {}
            for micro in range(accum):
                batch = next(batches)
                sync = nullcontext() if micro == accum - 1 else acc.no_sync(self.model)
                with sync:
                    with acc.autocast():
                        loss, parts = self.compute_losses(batch)
                    acc.backward(loss / accum)
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) / accum
            if cfg.max_grad_norm > 0:
                acc.clip_grad_norm_(self.params, cfg.max_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            step += 1

            lr = self.scheduler.get_last_lr()[0]
            bar.update(1)
            bar.set_postfix(loss=f"{sums['loss']:.4f}", lr=f"{lr:.1e}")
            if step % max(1, cfg.log_every) == 0 or step == cfg.max_steps:
                elapsed = time.perf_counter() - tic
                record = {"step": step, "lr": lr, **sums, "s_per_step": elapsed / max(1, cfg.log_every)}
                acc.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=step)
                if acc.is_main_process:
                    with open(log_path, "a", encoding="utf-8") as f:
                        f.write(json.dumps(record) + "\n")
                tic = time.perf_counter()
            if cfg.validate_every and step % cfg.validate_every == 0:
                self.validate(step)
            last = step == cfg.max_steps
            if last or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                path = self.save(step, final=last)
                if last:
                    final_path = path
        bar.close()
        self._check_replicas_in_sync()
        self._finish()
        if self.start_step >= cfg.max_steps:
            acc.print(f"pisa-sr train: already at step {self.start_step} >= --max-steps {cfg.max_steps}.")
            if acc.is_main_process:
                final_path = write_weights(self.weights(), checkpoint_stem(self.output_dir, cfg.stage, None),
                                           self.config_json, self.start_step)
        if acc.is_main_process:
            acc.print(f"pisa-sr train: weights written to {final_path}")
        return final_path

    def _finish(self) -> None:
        """Release the DDP wrapper, then end training (accelerate destroys the process group there).
        DDP's reducer frees the group with the GIL held; holding the last reference, it would make
        gloo's teardown wait for a worker thread that is itself waiting for the GIL (a hang at exit
        on a loaded machine). Released first, the group's last reference is dropped by
        destroy_process_group, which releases the GIL."""
        acc = self.accelerator
        acc.wait_for_everyone()
        self.model = None
        acc.free_memory()
        acc.end_training()

    def _check_replicas_in_sync(self) -> None:
        """DDP keeps every process's LoRA identical; a mismatch means the processes did not train together."""
        acc = self.accelerator
        if acc.num_processes < 2:
            return
        total = torch.stack([p.detach().float().sum() for p in self.params]).sum().view(1).to(self.device)
        sums = acc.gather(total)
        if not torch.allclose(sums, sums[:1].expand_as(sums), rtol=1e-5, atol=1e-6):
            raise PiSAError(f"The {acc.num_processes} training processes ended with different LoRA weights "
                            f"(checksums {sums.tolist()}); check the accelerate/torch.distributed setup.")
        acc.print(f"pisa-sr train: {acc.num_processes} processes in sync.")


def train(config: TrainConfig) -> Path:
    """Train one stage; returns the final .safetensors path (on the main process)."""
    return Trainer(config).run()
