"""Floating-point operations per stage of one upscale, counted (not timed) on the real-size
SD2.1-base architecture placed on PyTorch's `meta` device: the shapes are real, no weight or
activation is ever allocated, so the count takes seconds and no memory.

    python benchmarks/flops.py [--side 128] [--upscale 4]

Counts with torch.utils.flop_counter.FlopCounterMode (matrix products, convolutions and
attention; 2 operations per multiply-add, as the matmul throughput probe counts them), through
the pipeline's public stages: VAE encode, UNet (default: one pass; adjustable: two as one batch),
VAE decode, and the decode with the fast decoder (VOSR's half-width SD2.1 VAE decoder, published
structure: tests/decoder_files.py). Writes benchmarks/results/flops-<date>.json; benchmarks/report.py divides
these counts by the stage times of the newest quiet cpu_speed.py run and the probe beside them for the share
of the machine's matrix throughput each stage reaches. The timed benchmarks count their own work with
`upscale_gflop` and `variant_gflop` for the share stored with each figure.
"""

from __future__ import annotations

import argparse
import sys

import torch
from common import lq_image, random_weights, sd21_base, write_result
from decoder_files import random_fast_decoder
from torch.utils.flop_counter import FlopCounterMode

from pisa_core.inference.guidance import PISA, PIX
from pisa_core.inference.pipeline import PiSAPipeline


def meta_pipeline(decoder=None) -> PiSAPipeline:
    """The real-size architecture and LoRAs of the release's shape, built on the meta device
    (decoder: a fast decoder in place of the VAE's)."""
    with torch.device("meta"):
        base = sd21_base()
    return PiSAPipeline(base, random_weights(base.unet), device="meta", dtype="fp32", decoder=decoder)


def count(stage) -> float:
    """GFLOP of one call of `stage()`."""
    with FlopCounterMode(display=False) as counter:
        stage()
    return counter.get_total_flops() / 1e9


def stage_gflop(pipe: PiSAPipeline, fast: PiSAPipeline, side: int, upscale: float) -> dict[str, float]:
    with torch.inference_mode():
        pixels, _ = pipe.prepare(lq_image(side), upscale=upscale)
        latent = pipe.encode(pixels)
        eps = pipe.predict_eps(latent, need=(PISA,))
        z_high = pipe.guide(latent, eps, 1.0, 1.0)
        return {"encode": count(lambda: pipe.encode(pixels)),
                "unet": count(lambda: pipe.predict_eps(latent, need=(PISA,))),
                "unet (adjustable)": count(lambda: pipe.predict_eps(latent, need=(PIX, PISA))),
                "decode": count(lambda: pipe.decode(z_high)),
                "decode (fast decoder)": count(lambda: fast.decode(z_high))}


def upscale_gflop(side: int = 128, upscale: float = 4.0) -> dict[str, float]:
    """stage -> GFLOP of one `side`² input upscaled by `upscale`, the fast decoder's decode too
    (counted now on the meta device, in seconds)."""
    return stage_gflop(meta_pipeline(), meta_pipeline(random_fast_decoder(device="meta")), side, upscale)


def variant_gflop(stages: dict[str, float], variant: str) -> float:
    """The operations one image of a speed.py variant needs, from `stages` (stage_gflop): the
    release structure and the naive baselines are charged the work our pipeline counts for the
    same output, so their share of the machine's rate shows what their structure wastes."""
    if variant in ("ours-readjust", "ours-decode"):
        return stages["decode"]
    unet = stages["unet (adjustable)"] if "adjustable" in variant else stages["unet"]
    return stages["encode"] + unet + stages["decode"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=128, help="input side in pixels (square)")
    parser.add_argument("--upscale", type=float, default=4.0)
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/flops-<date>.json)")
    args = parser.parse_args()
    stages = upscale_gflop(args.side, args.upscale)
    for stage, gflop in stages.items():
        print(f"{stage:20s} {gflop:10.1f} GFLOP")
    figures = {"input_side": args.side, "upscale": args.upscale, "stages_gflop": stages}
    print(f"wrote {write_result('flops', figures, out=args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
