"""Shared pieces of the benchmarks: the real-size SD2.1-base architecture with random weights,
random PiSA-SR LoRAs of the release's shape, peak-RSS bookkeeping and timing."""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the release-structure reference lives with the tests

from pisa_core.base_model import BaseModel  # noqa: E402
from pisa_core.checkpoint import PiSAWeights  # noqa: E402
from pisa_core.lora import LoRAFamily, release_target_modules  # noqa: E402

CONFIGS = ROOT / "pisa_core" / "configs"


def _config(name: str) -> dict:
    return {k: v for k, v in json.loads((CONFIGS / f"{name}.json").read_text()).items() if not k.startswith("_")}


def sd21_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(**_config("unet")).eval().requires_grad_(False)


def sd21_vae() -> AutoencoderKL:
    torch.manual_seed(1)
    return AutoencoderKL(**_config("vae")).eval().requires_grad_(False)


def sd21_text_encoder() -> CLIPTextModel:
    torch.manual_seed(2)
    return CLIPTextModel(CLIPTextConfig(**_config("text_encoder"))).eval().requires_grad_(False)


def sd21_base() -> BaseModel:
    """SD2.1-base architecture, random weights; the empty-prompt embedding is random too (timing
    does not depend on values)."""
    embeds = torch.randn(1, 77, 1024, generator=torch.Generator().manual_seed(3))
    return BaseModel(unet=sd21_unet(), vae=sd21_vae(), prompt_embeds=embeds, scaling_factor=0.18215,
                     source="random SD2.1-base architecture", kind="random")


def random_family(unet, rank: int = 4, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    modules = dict(unet.named_modules())
    factors = {}
    for name in release_target_modules(unet):
        w = modules[name].weight
        a_shape = (rank, w.shape[1], *w.shape[2:]) if w.dim() == 4 else (rank, w.shape[1])
        b_shape = (w.shape[0], rank, 1, 1) if w.dim() == 4 else (w.shape[0], rank)
        factors[name] = (torch.randn(a_shape, generator=g) * 0.01, torch.randn(b_shape, generator=g) * 0.01)
    return factors


def random_weights(unet) -> PiSAWeights:
    """Rank-4 pix and sem LoRAs on the release's 258 target modules."""
    return PiSAWeights(pix=LoRAFamily(4, 8.0, random_family(unet, seed=10)),
                       sem=LoRAFamily(4, 8.0, random_family(unet, seed=11)),
                       format="random", source="random PiSA-SR weights")


def peak_rss_gib() -> float:
    """Peak resident memory of this process (VmHWM), GiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def reset_peak_rss() -> None:
    """Linux: restart the VmHWM high-water mark, so a run's peak excludes model loading."""
    try:
        Path(f"/proc/{os.getpid()}/clear_refs").write_text("5")
    except OSError:
        pass


def current_peak_rss_gib() -> float:
    """VmHWM from /proc (honours reset_peak_rss), falling back to getrusage."""
    try:
        for line in Path(f"/proc/{os.getpid()}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return peak_rss_gib()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn, repeats: int, device: torch.device, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)
