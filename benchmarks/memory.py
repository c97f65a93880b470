"""Peak memory (and time) of whole upscales at growing output sizes with the default tiling, on
the real-size SD2.1-base architecture with random weights.

    python benchmarks/memory.py [--sizes 512 1024 2048 4096] [--device cpu] [--dtype fp32]

Each size runs in its own process: peak RSS after loading (model weights included) for the
whole upscale and per stage. Writes benchmarks/results/memory-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from common import ROOT, current_peak_rss_gib, random_weights, reset_peak_rss, sd21_base, sync


def run_size(size: int, device: str, dtype: str, vae_tile: int, latent_tile: int) -> dict:
    from pisa_core.colorfix import apply_color_fix
    from pisa_core.geometry import finish, prepare_exact
    from pisa_core.pipeline import PiSAPipeline

    device = torch.device(device)
    base = sd21_base()
    pipe = PiSAPipeline(base, random_weights(base.unet), device=device, dtype=dtype)
    del base
    g = torch.Generator().manual_seed(0)
    lq = torch.nn.functional.interpolate(torch.rand(1, 3, 16, 16, generator=g), size=(size // 4, size // 4),
                                         mode="bilinear")
    stages, start = {}, time.perf_counter()
    loaded = current_peak_rss_gib()
    with torch.inference_mode():
        for stage in ("prepare", "encode", "unet", "decode", "finish"):
            reset_peak_rss()
            t0 = time.perf_counter()
            if stage == "prepare":
                prepared = prepare_exact(lq, 4, 512)
            elif stage == "encode":
                latent = pipe.encode(prepared.pixels, vae_tile=vae_tile)
            elif stage == "unet":
                z_high = pipe.guided_latent(latent, 1.0, 1.0, latent_tile=latent_tile)
            elif stage == "decode":
                out = pipe.decode(z_high, vae_tile=vae_tile).cpu()
            else:
                out = finish(apply_color_fix((out * 0.5 + 0.5).clamp(0, 1), prepared.reference, "adain"), prepared)
            sync(device)
            stages[stage] = {"seconds": time.perf_counter() - t0, "peak_rss_gib": current_peak_rss_gib()}
    result = {"output": size, "seconds": time.perf_counter() - start, "load_peak_rss_gib": loaded,
              "peak_rss_gib": max(s["peak_rss_gib"] for s in stages.values()), "stages": stages,
              "shape": list(out.shape)}
    if device.type == "cuda":
        result["peak_gpu_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--vae-tile", type=int, default=512)
    parser.add_argument("--latent-tile", type=int, default=96)
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/memory-<device>.json)")
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)  # one size, in a child process
    args = parser.parse_args()
    if args.size:
        print(json.dumps(run_size(args.size, args.device, args.dtype, args.vae_tile, args.latent_tile)))
        return
    results = []
    print("| output | total s | peak RSS GiB (run) | encode | UNet | decode |\n|---|---|---|---|---|---|", flush=True)
    for size in args.sizes:
        cmd = [sys.executable, __file__, "--size", str(size), "--device", args.device, "--dtype", args.dtype,
               "--vae-tile", str(args.vae_tile), "--latent-tile", str(args.latent_tile)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            print(f"{size}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        results.append(r)
        s = r["stages"]
        print(f"| {size}² | {r['seconds']:.1f} | {r['peak_rss_gib']:.2f} | "
              f"{s['encode']['peak_rss_gib']:.2f} GiB {s['encode']['seconds']:.0f} s | "
              f"{s['unet']['peak_rss_gib']:.2f} GiB {s['unet']['seconds']:.0f} s | "
              f"{s['decode']['peak_rss_gib']:.2f} GiB {s['decode']['seconds']:.0f} s |", flush=True)
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    meta = {"device": args.device, "dtype": args.dtype, "vae_tile": args.vae_tile, "latent_tile": args.latent_tile,
            "torch": torch.__version__}
    target = Path(args.out) if args.out else out / f"memory-{args.device}.json"
    target.write_text(json.dumps({"meta": meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
