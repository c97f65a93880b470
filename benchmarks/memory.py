"""Peak memory (and time) of whole upscales at growing output sizes with the default tiling, on
the real-size SD2.1-base architecture with random weights.

    python benchmarks/memory.py [--sizes 512 1024 2048 4096] [--device cpu] [--dtype auto] [--vae-tile 0]

Each size runs in its own process, through the pipeline's public stages one by one: peak RSS
after loading (model weights included) for the whole upscale and per stage, and the VAE tile each
VAE stage actually ran with (the default 0 = auto: untiled when the stage fits in free memory).
Before each size, a matrix-product probe in the dtype it runs in; each size's seconds are stored
with that probe and their share of it (the size's operations counted by flops.py).
Writes one JSON file per run, benchmarks/results/memory-<device>-<date>.json; exits with 1 when any
size failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from common import (
    Children,
    Probes,
    current_peak_rss_gib,
    load_average,
    lq_image,
    random_weights,
    run_stages,
    sd21_base,
    with_share,
    write_result,
)


def run_size(size: int, device: str, dtype: str, vae_tile: int, latent_tile: int) -> dict:
    from pisa_core.inference.pipeline import PiSAPipeline
    from pisa_core.options import dtype_name

    base = sd21_base()
    pipe = PiSAPipeline(base, random_weights(base.unet), device=device, dtype=dtype)
    del base
    loaded = current_peak_rss_gib()
    start = time.perf_counter()
    out, stages = run_stages(pipe, lq_image(size // 4), vae_tile=vae_tile, latent_tile=latent_tile)
    result = {"output": size, "seconds": time.perf_counter() - start, "load_peak_rss_gib": loaded,
              "peak_rss_gib": max(s["peak_rss_gib"] for s in stages.values()), "stages": stages,
              "shape": list(out.shape), "dtype": dtype_name(pipe.dtype), "channels_last": pipe.channels_last}
    if pipe.device.type == "cuda":
        result["peak_gpu_gib"] = torch.cuda.max_memory_allocated(pipe.device) / 2**30
    return result


def _row(r: dict) -> str:
    s = r["stages"]
    tiles = "/".join("untiled" if s[k]["vae_tile"] >= r["output"] else str(s[k]["vae_tile"])
                     for k in ("encode", "decode"))
    stages = " | ".join(f"{s[k]['peak_rss_gib']:.2f} GiB {s[k]['seconds']:.1f} s" for k in ("encode", "unet", "decode"))
    return f"| {r['output']}² | {r['dtype']} | {r['seconds']:.1f} | {r['peak_rss_gib']:.2f} | {tiles} | {stages} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--vae-tile", type=int, default=0, help="VAE tile in pixels; 0 = auto (the default)")
    parser.add_argument("--latent-tile", type=int, default=96)
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/memory-<device>-<date>.json)")
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)  # one size, in a child process
    args = parser.parse_args()
    if args.size:
        print(json.dumps(run_size(args.size, args.device, args.dtype, args.vae_tile, args.latent_tile)))
        return 0
    from flops import upscale_gflop, variant_gflop

    from pisa_core.inference.hardware import resolve_dtype
    from pisa_core.options import dtype_name

    children, results, probes = Children(), [], Probes(args.device)
    dtype = dtype_name(resolve_dtype(args.dtype, torch.device(args.device)))
    load_before = load_average()
    probes.take("before", ["fp32", dtype])
    print("| output | dtype | total s | peak RSS GiB (run) | VAE tile encode/decode | encode | UNet | decode |\n"
          "|---|---|---|---|---|---|---|---|", flush=True)
    for size in args.sizes:
        cmd = [sys.executable, __file__, "--size", str(size), "--device", args.device, "--dtype", args.dtype,
               "--vae-tile", str(args.vae_tile), "--latent-tile", str(args.latent_tile)]
        probe = probes.take(f"{size}²", [dtype])
        r = children.run(f"{size}²", cmd)
        if r is not None:
            r = with_share({**r, "probes": [probe]}, variant_gflop(upscale_gflop(size // 4), "ours-default"))
            results.append(r)
            print(_row(r), flush=True)
    meta = {"device": args.device, "dtype": args.dtype, "vae_tile": args.vae_tile, "latent_tile": args.latent_tile,
            "torch": torch.__version__, "load_average_before": load_before, "load_average_after": load_average()}
    print(f"load average before {load_before}, after {meta['load_average_after']}")
    probes.take("after", ["fp32", dtype])
    path = write_result(f"memory-{torch.device(args.device).type}", {"meta": meta, "results": results,
                                                                      "failed": children.failed},
                        device=args.device, probe=probes, out=args.out)
    print(f"wrote {path}")
    return children.exit_code()


if __name__ == "__main__":
    sys.exit(main())
