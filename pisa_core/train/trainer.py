"""The training loop of both stages (accelerate: one device, or DDP under `accelerate launch`).

Stage pix: pixel LoRA trained, loss λ_l2·ℓ2 (+ optional LPIPS/CSD).
Stage sem: pixel LoRA from --init, active and frozen; semantic LoRA trained with
           λ_l2·ℓ2 + λ_lpips·LPIPS + λ_csd·CSD (release 1 / 2 / 1).
One optimiser step is pisa_core.train.step.TrainingStep; this module adds data, resume, logging,
checkpoints and validation around it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from .. import options
from ..errors import PiSAError
from ..files.images import check_output_folder, write_image
from ..model.base import load_base_model
from ..model.checkpoint import PiSAWeights, check_compatible, load_pisa_weights, stage_weights
from ..model.lora import FAMILIES, LoRAFamily
from .config import TrainConfig
from .data import PairDataset, PositionSampler, build_items, collate, missing_caption_warning
from .degradation import DegradationConfig
from .lpips import check_lpips_files
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
from .step import build_step


def resolve_mixed_precision(cfg: TrainConfig, on_gpu: bool) -> str:
    """'auto': fp16 on GPUs (the release), full precision on the CPU."""
    if cfg.mixed_precision == "auto":
        return "fp16" if on_gpu else "no"
    if cfg.mixed_precision == "fp16" and not on_gpu:
        raise PiSAError("--mixed-precision fp16 needs a GPU; use 'no' or 'bf16' on the CPU.")
    return cfg.mixed_precision


def frozen_weight_dtype(mixed_precision: str, half_frozen_weights: bool) -> torch.dtype:
    """Storage of the frozen weights (base UNet, VAE, text encoder, LPIPS). As the release: fp32,
    with fp16/bf16 mixed precision only in the forward passes (autocast); the CSD's frozen UNet,
    which shares the generator's base weights, computes in the autocast type as well.
    --half-frozen-weights stores them in the half type instead, to save memory."""
    if half_frozen_weights and mixed_precision != "no":  # resolved: "no", "fp16" or "bf16"
        return options.DTYPES[mixed_precision]
    return torch.float32


def resolve_trackers(report_to: str):
    if report_to == "none":
        return None
    if report_to == "auto":
        found = importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX")
        return "tensorboard" if found else None
    return report_to


# What a run leaves in --output-dir besides checkpoints/ and the weights (see state.py's layout).
RUN_FILES = ("config.json", "train_log.jsonl")


def previous_run(output_dir) -> str | None:
    """What shows that `output_dir` already holds a training run (a checkpoint, weights, its config
    or log), or None."""
    folder = Path(output_dir)
    checkpoints = folder / "checkpoints"
    if checkpoints.is_dir() and any(checkpoints.iterdir()):
        return str(checkpoints)
    found = sorted(folder.glob("pisa_sr_*.safetensors")) + sorted(folder.glob("pisa_sr_*.pkl"))
    found += [folder / name for name in RUN_FILES]
    return next((str(path) for path in found if path.exists()), None)


def check_output_dir(cfg: TrainConfig) -> None:
    """Before any model loads: a folder holding a run is continued only with --resume, never
    trained over; the folder must be writable."""
    found = None if cfg.resume else previous_run(cfg.output_dir)
    if found is not None:
        raise PiSAError(f"--output-dir '{cfg.output_dir}' already holds a training run ({found}); continue it "
                        "with --resume latest, or choose another --output-dir.")
    check_output_folder(cfg.output_dir, "--output-dir")


def _worker_init(_):
    torch.set_num_threads(1)  # degradation in many workers; no thread oversubscription


class Trainer:
    """Builds everything from a TrainConfig; `run()` trains and returns the final weights path."""

    def __init__(self, config: TrainConfig):
        from accelerate import Accelerator
        from accelerate.utils import ProjectConfiguration

        cfg = config.resolved()
        check_output_dir(cfg)
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
        self.weight_dtype = frozen_weight_dtype(mixed, cfg.half_frozen_weights)
        self.resume_from = self._resume_folder(cfg)

        # data first: a bad folder fails before minutes of model loading
        items = build_items(cfg.data, cfg.lq_data, cfg.captions)
        warning = missing_caption_warning(items) if cfg.lambda_csd > 0 else None
        if warning and acc.is_main_process:
            print(warning, file=sys.stderr)
        needs_text = cfg.lambda_csd > 0 or (cfg.null_text_ratio < 1 and any(i.caption for i in items))

        # frozen base model (text encoder kept only for captions and the CSD negative prompt)
        base = load_base_model(cfg.base, device="cpu", dtype=torch.float32, keep_text_encoder=needs_text)
        init = load_pisa_weights(cfg.init) if cfg.init else None
        if init is not None:
            check_compatible(init, base.unet, cfg.init)
            cfg = self._ranks_from_init(cfg, init)
        self.config = cfg
        self.config_json = cfg.to_json()

        # the trainable families' set is final before accelerate builds the DDP wrapper, which
        # averages the gradients of exactly those parameters
        self.step = build_step(cfg, base, init, acc, self.device, self.weight_dtype)
        self.step.model, self.step.optimizer = acc.prepare(self.step.generator, self.step.optimizer)
        self.lora = self.step.lora

        # data
        group = cfg.batch_size if cfg.null_text_draw == "batch" else 1
        self.dataset = PairDataset(items, crop_size=cfg.crop_size, seed=cfg.seed, hflip=cfg.hflip, vflip=cfg.vflip,
                                   null_text_ratio=cfg.null_text_ratio, null_text_group=group,
                                   degradation=DegradationConfig())
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
        for family in FAMILIES:
            factors = {name: (pair["A"], pair["B"]) for name, pair in state["lora"][family].items()}
            saved = LoRAFamily(self.lora.ranks[family], self.lora.alphas[family], factors)
            self.lora.load_family(family, saved, f"resume state {folder}")
        self.step.optimizer.load_state_dict(state["optimizer"])
        self.step.scheduler.load_state_dict(state["scheduler"])
        if "scaler" in state and self.accelerator.scaler is not None:
            self.accelerator.scaler.load_state_dict(state["scaler"])
        snap = load_rng(folder, self.accelerator.process_index)
        if snap is not None:
            restore_rng(snap, self.step.rng)
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

    # ------------------------------------------------------------------ outputs

    def weights(self) -> PiSAWeights:
        """Both adapters; in the pix stage the sem family is written as zeros (no effect)."""
        return stage_weights(self.config.stage, self.lora.family("pix"), self.lora.family("sem"))

    def save(self, step: int, final: bool = False) -> Path | None:
        """Weights + config (main process) and the resumable state (every process)."""
        acc = self.accelerator
        acc.wait_for_everyone()
        folder = state_dir(self.output_dir, step)
        path = None
        if acc.is_main_process:
            factors = {f: {n: {"A": A, "B": B} for n, (A, B) in self.lora.family(f).factors.items()}
                       for f in FAMILIES}
            save_train_state(folder, step=step, stage=self.config.stage, config_json=self.config_json,
                             lora_factors=factors, optimizer=self.step.optimizer, scheduler=self.step.scheduler,
                             scaler=acc.scaler)
            path = write_weights(self.weights(), checkpoint_stem(self.output_dir, self.config.stage, step),
                                 self.config_json, step, self.config.save_format)
            if final:
                path = write_weights(self.weights(), checkpoint_stem(self.output_dir, self.config.stage, None),
                                     self.config_json, step, self.config.save_format)
        acc.wait_for_everyone()
        save_rng(folder, acc.process_index, self.step.rng)
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
            _, sr = self.step.generator(lq, self.step.prompts([""] * len(samples)))
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
        self.step.model.train()
        final_path = None
        step = self.start_step
        tic = time.perf_counter()
        while step < cfg.max_steps:
            logged = self.step([next(batches) for _ in range(accum)])
            sums = {k: sum(float(parts[k]) for parts in logged) / accum for k in logged[0]}
            step += 1

            lr = self.step.scheduler.get_last_lr()[0]
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
                                           self.config_json, self.start_step, cfg.save_format)
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
        self.step.model = None
        acc.free_memory()
        acc.end_training()

    def _check_replicas_in_sync(self) -> None:
        """DDP keeps every process's LoRA identical; a mismatch means the processes did not train together."""
        acc = self.accelerator
        if acc.num_processes < 2:
            return
        total = torch.stack([p.detach().float().sum() for p in self.step.params]).sum().view(1).to(self.device)
        sums = acc.gather(total)
        if not torch.allclose(sums, sums[:1].expand_as(sums), rtol=1e-5, atol=1e-6):
            raise PiSAError(f"The {acc.num_processes} training processes ended with different LoRA weights "
                            f"(checksums {sums.tolist()}); check the accelerate/torch.distributed setup.")
        acc.print(f"pisa-sr train: {acc.num_processes} processes in sync.")


def train(config: TrainConfig) -> Path:
    """Train one stage; returns the final weights path (.safetensors, or .pkl with --save-format
    official; on the main process)."""
    return Trainer(config).run()
