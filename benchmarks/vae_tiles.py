"""Tiled VAE against untiled: how far the exact tiles are from the untiled picture, and their time.

    python benchmarks/vae_tiles.py [--size 1024] [--tiles 256 512] [--dtype fp32] [--device cpu]

The real-size SD2.1 VAE architecture (pisa_core/configs/vae.json) with random weights, through
the pipeline's public stages (PiSAPipeline.encode / decode; a tiny UNet, unused); a synthetic image whose regions differ
in mean and contrast, so per-tile GroupNorm statistics would differ from the whole image's. The
untiled encode and decode (vae_tile = the image side) are the references; each tile size's encode
is compared in latent units (relative to the latent's standard deviation; target: max <= 1 %) and
its decode in 8-bit levels (target: max <= 2/255). A matrix-product probe in the dtype timed
precedes each tile size's encode and decode; each row stores it with the share of it each stage
reaches (the stage's operations at that tile, counted on the meta device). Prints a Markdown table
and writes benchmarks/results/vae-tiles-<device>-<date>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

import torch
from common import Probes, random_weights, sd21_vae, sync, tiny_models, write_result
from quiet import share

from pisa_core.model.base import BaseModel
from pisa_core.options import dtype_name

DECODE_MAX_LEVELS = 2.0   # issue target: decode within 2/255 of the untiled decode
ENCODE_MAX_OF_STD = 0.01  # issue target: encode within 1 % of the latent's standard deviation


def regions_image(side: int) -> torch.Tensor:
    """Pixels [1, 3, side, side] in [-1, 1]: a flat dark block, a bright noisy half, a gradient
    strip and smooth structure elsewhere."""
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    x = torch.nn.functional.interpolate(coarse, size=(side, side), mode="bilinear")
    half, third = side // 2, side // 3
    x[:, :, :half, :third] = -0.8 + 0.05 * x[:, :, :half, :third]
    noise = torch.rand(1, 3, side - half, side - third, generator=g) * 2 - 1
    x[:, :, half:, third:] = (0.3 + 0.7 * noise).clamp(-1, 1)
    x[:, 0, :, -side // 4:] = torch.linspace(-1, 1, side)[:, None]
    return x


def vae_only_base() -> BaseModel:
    """The real-size VAE beside a tiny UNet: encode and decode never touch the UNet, and the
    real one's weights would take memory the untiled reference decode needs."""
    unet = tiny_models.tiny_unet().requires_grad_(False)
    embeds = torch.zeros(1, 77, unet.config.cross_attention_dim)
    return BaseModel(unet=unet, vae=sd21_vae(), prompt_embeds=embeds, scaling_factor=0.18215,
                     source="random SD2.1 VAE architecture", kind="random")


def vae_only_pipeline(device: str, dtype: str):
    """PiSAPipeline around vae_only_base() (random LoRAs on its tiny UNet) on `device`."""
    from pisa_core.inference.pipeline import PiSAPipeline

    with torch.device("meta") if device == "meta" else contextlib.nullcontext():
        base = vae_only_base()
    return PiSAPipeline(base, random_weights(base.unet), device=device, dtype=dtype)


def vae_gflop(size: int, tiles: list[int]) -> dict[int, dict[str, float]]:
    """tile -> {"encode", "decode"}: GFLOP of each VAE stage of a `size`² image at that tile (a
    tile as large as the image: untiled), counted on the meta device."""
    from flops import count

    pipe = vae_only_pipeline("meta", "fp32")
    pixels = regions_image(size)
    with torch.inference_mode():
        latent = pipe.encode(pixels, vae_tile=size)
        return {t: {"encode": count(lambda t=t: pipe.encode(pixels, vae_tile=t)),
                    "decode": count(lambda t=t: pipe.decode(latent, vae_tile=t))} for t in tiles}


def vae_arguments(doc: str, size: int, tiles: list[int], dtype: str) -> argparse.ArgumentParser:
    """The options both VAE benchmarks take: image side, tiles, dtype, device."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=size)
    parser.add_argument("--tiles", type=int, nargs="+", default=tiles)
    parser.add_argument("--dtype", default=dtype)
    parser.add_argument("--device", default="cpu")
    return parser


def timed(pipe, fn):
    sync(pipe.device)
    start = time.perf_counter()
    out = fn()
    sync(pipe.device)
    return out, time.perf_counter() - start


def to_levels(image: torch.Tensor) -> torch.Tensor:
    return (image.float().cpu().clamp(-1, 1) + 1) * 127.5


def main() -> int:
    parser = vae_arguments(__doc__, 1024, [256, 512], "fp32")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/vae-tiles-...)")
    args = parser.parse_args()
    whole = args.size  # a tile as large as the image: the plain untiled forward
    counted = vae_gflop(args.size, [whole, *args.tiles])
    pipe = vae_only_pipeline(args.device, args.dtype)
    pixels, dtype = regions_image(args.size), dtype_name(pipe.vae_dtype)
    probes = Probes(args.device)
    probes.take("before")

    def measured(tile: int, **found) -> dict:
        """A row: the probe taken before it, each stage's seconds and share of that probe."""
        probe = probes[str(tile)][dtype]
        return {"tile": "untiled" if tile == whole else tile, **found, "probe": probe,
                **{f"{k}_share": share(counted[tile][k], found[f"{k}_s"], probe) for k in ("encode", "decode")}}

    probes.take(str(whole), [dtype])
    ref_latent, enc_s = timed(pipe, lambda: pipe.encode(pixels, vae_tile=whole))
    ref_image, dec_s = timed(pipe, lambda: pipe.decode(ref_latent, vae_tile=whole))
    ref_levels, latent_std = to_levels(ref_image), ref_latent.float().std().item()
    rows = [measured(whole, encode_s=enc_s, decode_s=dec_s)]
    for tile in args.tiles:
        probes.take(str(tile), [dtype])
        latent, enc_s = timed(pipe, lambda t=tile: pipe.encode(pixels, vae_tile=t))
        image, dec_s = timed(pipe, lambda t=tile: pipe.decode(ref_latent, vae_tile=t))
        enc_diff = (latent.float() - ref_latent.float()).abs().cpu()
        dec_diff = (to_levels(image) - ref_levels).abs()
        rows.append(measured(tile, encode_s=enc_s, decode_s=dec_s,
                     encode_mean_of_std=enc_diff.mean().item() / latent_std,
                             encode_max_of_std=enc_diff.max().item() / latent_std,
                             decode_mean_levels=dec_diff.mean().item(), decode_max_levels=dec_diff.max().item()))
    passed = all(r["encode_max_of_std"] <= ENCODE_MAX_OF_STD and r["decode_max_levels"] <= DECODE_MAX_LEVELS
                 for r in rows[1:])
    print(f"{args.size}² image, real-size SD2.1 VAE with random weights, {args.dtype} on {args.device}; "
          f"latent std {latent_std:.3f}\n")
    print("| VAE tile | encode: mean / max abs diff (% of latent std) | decode: mean / max abs diff (8-bit levels) "
          "| encode s | decode s |\n|---|---|---|---|---|")
    for r in rows:
        if r["tile"] == "untiled":
            print(f"| untiled (reference) | – | – | {r['encode_s']:.1f} | {r['decode_s']:.1f} |")
        else:
            print(f"| {r['tile']} px | {100 * r['encode_mean_of_std']:.4f} / {100 * r['encode_max_of_std']:.4f} | "
                  f"{r['decode_mean_levels']:.4f} / {r['decode_max_levels']:.4f} | {r['encode_s']:.1f} | "
                  f"{r['decode_s']:.1f} |")
    print(f"\ntargets (decode max <= {DECODE_MAX_LEVELS}/255, encode max <= {100 * ENCODE_MAX_OF_STD:g} % of the "
          f"latent std): {'met' if passed else 'NOT met'}")
    probes.take("after")
    figures = {"size": args.size, "dtype": args.dtype, "latent_std": latent_std, "rows": rows, "targets_met": passed,
               "gflop": {str(t): found for t, found in counted.items()}}
    path = write_result(f"vae-tiles-{torch.device(args.device).type}", figures, device=args.device, probe=probes,
                        out=args.out)
    print(f"written {path}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
