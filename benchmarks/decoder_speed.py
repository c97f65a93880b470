"""The fast decoder beside the SD2.1 VAE decoder: decode-stage seconds and peak memory at 512² and
2048² outputs, and the whole default upscale (128² input, x4) at 512², in one run, with the
matrix-product probe taken before every round (in the dtype timed), each figure with its share of
that probe (FLOPs / (seconds x probe)) and the run's quiet gate.

    python benchmarks/decoder_speed.py [--device cpu] [--dtype auto] [--sizes 512 2048] [--repeats 3]

Real-size architectures with random weights (timing does not depend on values): the SD2.1-base
model of benchmarks/common.py, and the fast decoder's published structure (VOSR's
sd21_lwdecoder.pth: widths 64/128/256/256, tests/decoder_files.py) read through pisa_core's
checks. Each measurement runs in its own process (a clean peak), the two decoders alternating:
decode at each size (default vae_tile 0 = auto, the tile recorded), then the whole upscale. The
decode's peak memory is its rise above the memory at its start (RSS on a CPU, allocated memory on
a GPU), so the model's weights do not count. Prints the fast / VAE ratios; writes
benchmarks/results/decoder-speed-<device>-<date>.json after every measurement ("complete": false
until the last; the 2048² decodes come last, so a run stopped there keeps the rest).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
from common import (
    TINY,
    Children,
    Probes,
    current_peak_rss_gib,
    lq_image,
    random_weights,
    reset_peak_rss,
    round_probe,
    run_stages,
    sd21_base,
    sync,
    with_share,
    write_result,
)
from decoder_files import PUBLISHED_WIDTHS, TINY_WIDTHS, random_fast_decoder
from flops import upscale_gflop

from pisa_core.options import LATENT_FACTOR

DECODERS = ("vae", "fast")
WHOLE_INPUT = 128  # the whole default upscale: 128² in, x4, 512² out


def pipeline(decoder: str, device: str, dtype: str):
    from pisa_core.inference.pipeline import PiSAPipeline

    base = sd21_base()
    fast = random_fast_decoder(TINY_WIDTHS if TINY else PUBLISHED_WIDTHS) if decoder == "fast" else None
    return PiSAPipeline(base, random_weights(base.unet), device=device, dtype=dtype, decoder=fast)


def timed_decode(pipe, side: int) -> dict:
    """One decode of a random latent for a side² output: seconds, the tile, and the peak rise."""
    latent = torch.randn(1, 4, side // LATENT_FACTOR, side // LATENT_FACTOR, generator=torch.Generator().manual_seed(0))
    cuda = pipe.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(pipe.device)
        start_bytes = torch.cuda.memory_allocated(pipe.device)
    reset_peak_rss()
    start_rss = current_peak_rss_gib()  # the high-water mark just reset: the memory now
    tic = time.perf_counter()
    with torch.inference_mode():
        out = pipe.decode(latent, vae_tile=0)
    sync(pipe.device)
    result = {"seconds": time.perf_counter() - tic, "vae_tile": pipe.vae_tile_for("decode", (side, side), 0),
              "peak_rise_gib": current_peak_rss_gib() - start_rss}
    if cuda:
        result["peak_rise_gib"] = (torch.cuda.max_memory_allocated(pipe.device) - start_bytes) / 2**30
    del out
    return result


def measure(decoder: str, job: str, device: str, dtype: str, repeats: int) -> dict:
    """In a child process: 'decode-<side>' (repeats; peak from the first) or 'whole'."""
    from pisa_core.options import dtype_name

    pipe = pipeline(decoder, device, dtype)
    result = {"decoder": decoder, "job": job, "dtype": dtype_name(pipe.dtype), "probes": []}

    def probed(run):
        result["probes"].append(round_probe([result["dtype"]], device))
        return run()

    if job == "whole":
        runs = []
        for _ in range(repeats):
            _out, stages = probed(lambda: run_stages(pipe, lq_image(WHOLE_INPUT)))
            runs.append({"seconds": sum(s["seconds"] for s in stages.values()),
                         "decode_seconds": stages["decode"]["seconds"]})
        return {**result, "seconds": statistics.median(r["seconds"] for r in runs),
                "decode_seconds": statistics.median(r["decode_seconds"] for r in runs), "runs": runs}
    runs = [probed(lambda: timed_decode(pipe, int(job.split("-")[1]))) for _ in range(repeats)]
    return {**result, "seconds": statistics.median(r["seconds"] for r in runs), "vae_tile": runs[0]["vae_tile"],
            "peak_rise_gib": runs[0]["peak_rise_gib"], "runs": runs}


def job_gflop(decoder: str, job: str) -> float:
    """The operations a measurement needs (counted on the meta device): the decode at its size, or
    the whole default upscale, with the decoder measured."""
    side = WHOLE_INPUT * 4 if job == "whole" else int(job.split("-")[1])
    stages = upscale_gflop(side // 4)
    decode = stages["decode (fast decoder)" if decoder == "fast" else "decode"]
    return stages["encode"] + stages["unet"] + decode if job == "whole" else decode


def ratios(results: list[dict]) -> dict:
    """fast / vae for every job both measured: seconds, and peak memory for the decodes."""
    by = {(r["decoder"], r["job"]): r for r in results}
    out = {}
    for job in dict.fromkeys(r["job"] for r in results):
        vae, fast = by.get(("vae", job)), by.get(("fast", job))
        if vae and fast:
            out[job] = {"seconds": fast["seconds"] / vae["seconds"]}
            if "peak_rise_gib" in vae and vae["peak_rise_gib"] > 0:
                out[job]["peak_memory"] = fast["peak_rise_gib"] / vae["peak_rise_gib"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 2048], help="decode output sides")
    parser.add_argument("--repeats", type=int, default=3, help="decodes per size below 1024² (one above)")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/decoder-speed-<device>-<date>.json)")
    parser.add_argument("--child", nargs=2, metavar=("DECODER", "JOB"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(*args.child, args.device, args.dtype, args.repeats)))
        return 0
    children, results, path, probes = Children(), [], None, Probes(args.device)
    probes.take("before")
    small = [(f"decode-{side}", args.repeats) for side in args.sizes if side < 1024]
    large = [(f"decode-{side}", 1) for side in args.sizes if side >= 1024]
    figures = {"device": args.device, "dtype": args.dtype, "whole_input": WHOLE_INPUT, "complete": False}
    for job, repeats in [*small, ("whole", 2), *large]:  # the long ones last: a stopped run keeps the rest
        for decoder in DECODERS:
            cmd = [sys.executable, __file__, "--child", decoder, job, "--device", args.device, "--dtype", args.dtype,
                   "--repeats", str(repeats)]
            r = children.run(f"{decoder} {job}", cmd)
            if r is not None:
                probes.add_rounds(f"{decoder} {job}", r)
                r = with_share(r, job_gflop(decoder, job))
                results.append(r)
                memory = f", peak +{r['peak_rise_gib']:.2f} GiB (tile {r['vae_tile']})" if "peak_rise_gib" in r else ""
                print(f"{decoder:5s} {job:12s} {r['seconds']:8.2f} s{memory}", flush=True)
            # after each measurement, failed ones included: a stopped run keeps what it measured
            figures.update(results=results, fast_over_vae=ratios(results), failed=children.failed)
            path = write_result(f"decoder-speed-{torch.device(args.device).type}", figures, device=args.device,
                                probe=probes, out=path or args.out)
    probes.take("after")
    figures["complete"] = True
    for job, ratio in figures.get("fast_over_vae", {}).items():
        print(f"fast / vae {job}: " + ", ".join(f"{k} {v:.2f}" for k, v in ratio.items()))
    path = write_result(f"decoder-speed-{torch.device(args.device).type}", figures, device=args.device, probe=probes,
                        out=path or args.out)
    print(f"wrote {path}")
    return children.exit_code()


if __name__ == "__main__":
    sys.exit(main())
