"""A whole upscale process with the structure of the authors' release, the baseline of the
whole-process benchmark (cpu_speed.py): load a diffusers folder in fp32 with `from_pretrained`
(UNet, VAE, text encoder, tokenizer, as the release does), attach the PiSA-SR weights of an
official .pkl (tests/release_reference.py), upscale one image, write a PNG.

    python benchmarks/release_process.py SD21_FOLDER PISA_SR.PKL INPUT.png OUTPUT.png [--adjustable]

Prints a summary line in the format of `pisa-sr upscale`'s.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from PIL import Image
from transformers import CLIPTextModel, CLIPTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from release_reference import ReleaseStyleSR  # noqa: E402


def load(folder: str, pkl: str, adjustable: bool) -> ReleaseStyleSR:
    return ReleaseStyleSR(
        UNet2DConditionModel.from_pretrained(folder, subfolder="unet").eval(),
        AutoencoderKL.from_pretrained(folder, subfolder="vae").eval(),
        CLIPTextModel.from_pretrained(folder, subfolder="text_encoder").eval(),
        CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer"),
        pkl, default=not adjustable, lambda_pix=0.8, lambda_sem=1.2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("pkl")
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--adjustable", action="store_true", help="λ = (0.8, 1.2) instead of the default (1, 1)")
    args = parser.parse_args()
    start = time.perf_counter()
    model = load(args.folder, args.pkl, args.adjustable)
    loaded = time.perf_counter() - start
    start = time.perf_counter()
    out = model.upscale(Image.open(args.input).convert("RGB"), upscale=4, process_size=512)
    levels = (out.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(levels).save(args.output)
    print(f"release-structure: 1 image written, {time.perf_counter() - start:.2f} s per image, "
          f"model loaded in {loaded:.1f} s (fp32 on cpu)", flush=True)
    return 0


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    sys.exit(main())
