"""Training configuration: one dataclass, its argparse front end, JSON on disk.

Defaults are the release's recipe (docs/release.md, "Training"; paper arXiv 2412.03017, Sec. 3
and 4.1) except the step counts, which are the paper's; loss weights left unset take the stage's
release values (pix: ℓ2 only; sem: ℓ2 + 2·LPIPS + 1·CSD).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PiSAError
from ..model.checkpoint import WEIGHT_WRITERS
from .lora import LORA_INITS

STAGES = ("pix", "sem")
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
LORA_INIT_CHOICES = tuple(LORA_INITS)
CSD_CAPTIONS = ("real", "generator")
NULL_TEXT_DRAWS = ("batch", "sample")
SAVE_FORMATS = tuple(WEIGHT_WRITERS)  # "ours" (.safetensors), "official" (the release's pisa_sr.pkl layout)
# docs/release.md, "Training": the negative prompt of the CSD unconditional branch
RELEASE_NEGATIVE_PROMPT = (
    "painting, oil painting, illustration, drawing, art, sketch, oil painting, cartoon, CG Style, 3D render, "
    "unreal engine, blurring, dirty, messy, worst quality, low quality, frames, watermark, signature, "
    "jpeg artifacts, deformed, lowres, over-smooth"
)
# release loss weights per stage: (λ_l2, λ_lpips, λ_csd)
STAGE_LOSS_WEIGHTS = {"pix": (1.0, 0.0, 0.0), "sem": (1.0, 2.0, 1.0)}
STAGE_MAX_STEPS = {"pix": 4000, "sem": 8500}  # the paper's (the release's script runs sem to 100,000)


def _opt(default, help_text, **extra):
    return field(default=default, metadata={"help": help_text, **extra})


@dataclass
class TrainConfig:
    # what and where
    stage: str = _opt("pix", "training stage: 'pix' (pixel LoRA, ℓ2) or 'sem' (semantic LoRA on a frozen pix)",
                      choices=STAGES)
    base: str = _opt("", "SD2.1-base model: diffusers folder or single-file checkpoint (.safetensors/.ckpt)",
                     required=True)
    data: list = field(default_factory=list, metadata={
        "help": "HQ training images: folders (recursive), .txt list files or image files", "required": True})
    output_dir: str = _opt("", "folder for checkpoints, states, validation images and logs", required=True)
    lq_data: str | None = _opt(None, "paired LQ folder (same relative names as --data); default: degrade online")
    captions: str | None = _opt(None, "JSONL captions (image key + text key); default: same-stem .txt files")
    init: str | None = _opt(None, "PiSA-SR weights to start from (.safetensors or the official .pkl); "
                                  "required for --stage sem (its pix LoRA is loaded and frozen)")
    init_sem: bool = _opt(False, "sem stage: also start the sem LoRA from --init (fine-tuning a full checkpoint)")
    resume: str | None = _opt(None, "continue an interrupted run: a state folder, or 'latest' in --output-dir")
    # schedule
    max_steps: int | None = _opt(None, "optimizer steps (default: paper, pix 4000 / sem 8500)")
    batch_size: int = _opt(4, "images per process and micro-step")
    gradient_accumulation_steps: int = _opt(1, "micro-steps per optimizer step")
    lr: float = _opt(5e-5, "AdamW learning rate (constant after warm-up)")
    lr_warmup_steps: int = _opt(0, "linear warm-up steps")
    weight_decay: float = _opt(1e-2, "AdamW weight decay")
    max_grad_norm: float = _opt(1.0, "gradient-norm clip (0 disables)")
    # data
    crop_size: int = _opt(512, "random crop size (multiple of 8 and of the scale 4)")
    hflip: bool = _opt(True, "random horizontal flips")
    vflip: bool = _opt(False, "random vertical flips")
    caption_suffix: str = _opt(", ", "text appended to every non-empty caption; the default ', ' is what the release "
                                     "appends to its tag captions; '' appends nothing")
    null_text_ratio: float = _opt(0.5, "probability of giving the generator the empty prompt instead of the caption")
    null_text_draw: str = _opt("batch", "null-text dropout drawn once per micro-batch ('batch', the release) or "
                                        "per image ('sample'); same average rate", choices=NULL_TEXT_DRAWS)
    num_workers: int = _opt(4, "DataLoader worker processes (0: load in the training process)")
    # model
    rank_pix: int = _opt(4, "pix LoRA rank")
    rank_sem: int = _opt(4, "sem LoRA rank")
    alpha_pix: float = _opt(8.0, "pix LoRA alpha (scale = alpha / rank)")
    alpha_sem: float = _opt(8.0, "sem LoRA alpha")
    lora_init: str = _opt("gaussian", "initial LoRA A: 'gaussian' (std 1/rank, the release) or 'kaiming' "
                                      "(peft's default); B starts at zero", choices=LORA_INIT_CHOICES)
    encode_sample: bool = _opt(True, "encode the LQ with a posterior sample, as the release (noise as "
                                     "augmentation); --no-encode-sample takes the mean, as inference does")
    # losses
    lambda_l2: float | None = _opt(None, "ℓ2 weight (default 1)")
    lambda_lpips: float | None = _opt(None, "LPIPS(VGG) weight (default pix 0, sem 2); 0 disables LPIPS")
    lpips_weights: list = field(default_factory=list, metadata={
        "help": "LPIPS weights file(s): VGG16 backbone + LPIPS heads (.pth/.safetensors)"})
    lambda_csd: float | None = _opt(None, "CSD weight (default pix 0, sem 1); 0 disables CSD")
    csd_t_min: int = _opt(20, "CSD timesteps: lower bound (inclusive)")
    csd_t_max: int = _opt(500, "CSD timesteps: upper bound (exclusive)")
    cfg_scale: float = _opt(7.5, "CSD classifier-free guidance scale")
    csd_caption: str = _opt("real", "caption of the CSD conditional branch: 'real' (always the image's caption, "
                                    "the release) or 'generator' (empty when the generator's is dropped)",
                            choices=CSD_CAPTIONS)
    negative_prompt: str = _opt(RELEASE_NEGATIVE_PROMPT, "CSD unconditional prompt (release's negative prompt)")
    # runtime
    device: str = _opt("auto", "'auto', 'cpu', 'cuda' or 'cuda:N' (with accelerate launch, accelerate decides)")
    mixed_precision: str = _opt("auto", "'auto' (fp16 on GPU, none on CPU), 'no', 'fp16' or 'bf16': forward passes "
                                        "under autocast, frozen weights kept in fp32 (the release)",
                                choices=MIXED_PRECISION)
    half_frozen_weights: bool = _opt(False, "with fp16/bf16 mixed precision, store the frozen weights (base UNet, "
                                            "VAE, text encoder, LPIPS) in that type instead of fp32: 2.6 GB less "
                                            "for SD2.1; norms, embeddings and the sums they start are then rounded "
                                            "too (see docs/training.md)")
    gradient_checkpointing: bool = _opt(False, "recompute UNet/VAE activations in backward to save memory")
    seed: int = _opt(0, "seed for LoRA init, data order, crops, degradations and CSD noise")
    checkpoint_every: int = _opt(500, "write a checkpoint + resumable state every N steps (0: only at the end)")
    validate_every: int = _opt(500, "write LQ|SR|HQ validation images every N steps (0: never)")
    val_count: int = _opt(2, "validation images (the first images of the data, centre crop)")
    log_every: int = _opt(10, "log losses every N steps")
    save_format: str = _opt("ours", "weights files: 'ours' (.safetensors with rank/alpha metadata) or 'official' "
                                    "(.pkl in the authors' pisa_sr.pkl layout, for their code and other PiSA-SR "
                                    "tools)", choices=SAVE_FORMATS)
    report_to: str = _opt("auto", "accelerate tracker: 'auto' (tensorboard when installed), 'none', "
                                  "'tensorboard', 'wandb', ...")

    def resolved(self) -> TrainConfig:
        """A copy with the stage defaults filled in, validated."""
        cfg = dataclasses.replace(self, data=list(self.data), lpips_weights=list(self.lpips_weights))
        l2, lpips, csd = STAGE_LOSS_WEIGHTS.get(cfg.stage, (1.0, 0.0, 0.0))
        cfg.lambda_l2 = l2 if cfg.lambda_l2 is None else float(cfg.lambda_l2)
        cfg.lambda_lpips = lpips if cfg.lambda_lpips is None else float(cfg.lambda_lpips)
        cfg.lambda_csd = csd if cfg.lambda_csd is None else float(cfg.lambda_csd)
        if cfg.max_steps is None:
            cfg.max_steps = STAGE_MAX_STEPS.get(cfg.stage, 1000)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if self.stage not in STAGES:
            raise PiSAError(f"--stage must be one of {', '.join(STAGES)}; got {self.stage!r}.")
        if not self.base:
            raise PiSAError("--base is required: the SD2.1-base folder or single-file checkpoint.")
        if not self.data:
            raise PiSAError("--data is required: HQ image folders or list files.")
        if not self.output_dir:
            raise PiSAError("--output-dir is required.")
        if self.stage == "sem" and not self.init and not self.resume:
            raise PiSAError("--stage sem needs --init <pix checkpoint> (the pix LoRA it trains on top of).")
        if self.crop_size <= 0 or self.crop_size % 8 or self.crop_size % 4:
            raise PiSAError(f"--crop-size must be a positive multiple of 8; got {self.crop_size}.")
        for name in ("batch_size", "gradient_accumulation_steps", "rank_pix", "rank_sem", "max_steps"):
            if int(getattr(self, name)) < 1:
                raise PiSAError(f"--{name.replace('_', '-')} must be at least 1; got {getattr(self, name)}.")
        if not 0 <= self.csd_t_min < self.csd_t_max <= 1000:
            raise PiSAError(f"CSD timesteps need 0 <= --csd-t-min < --csd-t-max <= 1000; got "
                            f"{self.csd_t_min}, {self.csd_t_max}.")
        if not 0.0 <= self.null_text_ratio <= 1.0:
            raise PiSAError(f"--null-text-ratio must be in [0, 1]; got {self.null_text_ratio}.")
        for name in ("lambda_l2", "lambda_lpips", "lambda_csd"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise PiSAError(f"--{name.replace('_', '-')} must be >= 0; got {value}.")
        for name, choices in (("mixed_precision", MIXED_PRECISION), ("lora_init", LORA_INIT_CHOICES),
                              ("csd_caption", CSD_CAPTIONS), ("null_text_draw", NULL_TEXT_DRAWS),
                              ("save_format", SAVE_FORMATS)):
            if getattr(self, name) not in choices:
                raise PiSAError(f"--{name.replace('_', '-')} must be one of {', '.join(choices)}; "
                                f"got {getattr(self, name)!r}.")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, ensure_ascii=False)

    def save(self, path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path) -> TrainConfig:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def describe(self) -> str:
        width = max(len(f.name) for f in dataclasses.fields(self))
        return "\n".join(f"  {f.name:<{width}} = {getattr(self, f.name)!r}" for f in dataclasses.fields(self))


def _base_type(annotation):
    """int | None -> int; list -> list; plain types as they are (annotations are strings here)."""
    text = str(annotation)
    for name, kind in (("bool", bool), ("int", int), ("float", float), ("list", list), ("str", str)):
        if text.startswith(name):
            return kind
    return str


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One --option per TrainConfig field (snake_case -> kebab-case), help from the field metadata."""
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        meta = dict(f.metadata)
        kind = _base_type(hints[f.name].__name__ if isinstance(hints[f.name], type) else hints[f.name])
        kwargs = {"help": meta.pop("help", ""), "dest": f.name}
        if meta.pop("required", False):
            kwargs["required"] = True
        if "choices" in meta:
            kwargs["choices"] = meta.pop("choices")
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
            kwargs["default"] = f.default
        elif kind is list:
            kwargs["nargs"] = "+"
            kwargs["default"] = []
        else:
            kwargs["type"] = kind
            kwargs["default"] = f.default
        if kwargs.get("required"):
            kwargs.pop("default", None)
        elif f.default not in (None, False, dataclasses.MISSING) and "default" not in kwargs["help"] \
                and kind is not list and len(str(f.default)) < 40:
            kwargs["help"] += f" (default: {f.default})"
        parser.add_argument(flag, **kwargs)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(args, f.name)}
    return TrainConfig(**values)
