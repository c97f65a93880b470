"""Does `vae_tile` auto (0) choose the fastest tile? Encode and decode seconds of one image size
at auto and at fixed tiles, measured in the same run.

    python benchmarks/vae_tile_speed.py [--size 4096] [--tiles 256 512 1024] [--rounds 1] [--dtype bf16]

The real-size SD2.1 VAE with random weights through PiSAPipeline.encode / decode (the set-up of
benchmarks/vae_tiles.py). Order, per round: every encode (auto, then each fixed tile in the order
given), then every decode of the auto encode's latent in the same order, so a change in the
machine's speed spreads over all of them rather than one; a matrix-product probe in the VAE's
dtype before each measurement feeds the run's quiet gate. A fixed tile as large as the image runs
the stage untiled. Prints a Markdown table and auto / fastest fixed tile per stage and in total;
writes benchmarks/results/vae-tile-speed-<device>-<date>.json after every measurement
("complete": false until the last), so a long run that is stopped still leaves its figures.
"""

from __future__ import annotations

import statistics
import sys

import torch
from common import Probes, write_result
from vae_tiles import regions_image, timed, vae_arguments, vae_only_pipeline

from pisa_core.options import LATENT_FACTOR, dtype_name

STAGES = ("encode", "decode")


def summarise(seconds: dict, auto_tiles: dict, tiles: list[int]) -> dict:
    """Per stage and in total: each configuration's median seconds, the fastest fixed tile and
    auto / fastest (None until both are measured)."""
    def median(config, stage):
        values = seconds[stage].get(config)
        return statistics.median(values) if values else None

    rows = []
    for config in ["auto", *tiles]:
        row = {"tile": config, **{f"{s}_s": median(config, s) for s in STAGES}}
        if config == "auto":
            row.update({f"{s}_auto_tile": auto_tiles[s] for s in STAGES})
        done = [row[f"{s}_s"] for s in STAGES]
        row["total_s"] = None if None in done else sum(done)
        rows.append(row)
    ratios = {}
    for key in [f"{s}_s" for s in STAGES] + ["total_s"]:
        fixed = [r for r in rows[1:] if r[key] is not None]
        if fixed and rows[0][key] is not None:
            fastest = min(fixed, key=lambda r: r[key])
            ratios[key.removesuffix("_s")] = {"fastest_fixed_tile": fastest["tile"],
                                               "auto_over_fastest": rows[0][key] / fastest[key]}
    return {"rows": rows, "auto_over_fastest": ratios}


def table(summary: dict) -> str:
    lines = ["| VAE tile | encode s | decode s | total s |", "|---|---|---|---|"]
    for r in summary["rows"]:
        name = (f"auto (encode {r['encode_auto_tile']}, decode {r['decode_auto_tile']})" if r["tile"] == "auto"
                else f"{r['tile']} px")
        lines.append(f"| {name} | " + " | ".join("–" if r[k] is None else f"{r[k]:.1f}"
                                                 for k in ("encode_s", "decode_s", "total_s")) + " |")
    lines.append("")
    for stage, found in summary["auto_over_fastest"].items():
        lines.append(f"{stage}: auto / fastest fixed tile ({found['fastest_fixed_tile']} px) = "
                     f"{found['auto_over_fastest']:.2f}")
    return "\n".join(lines)


def main() -> int:
    parser = vae_arguments(__doc__, 4096, [256, 512, 1024], "bf16")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    pipe = vae_only_pipeline(args.device, args.dtype)
    probes = Probes(args.device)
    probes.take("before")
    pixels = regions_image(args.size)
    side = args.size // LATENT_FACTOR
    auto_tiles = {"encode": pipe.vae_tile_for("encode", pixels.shape[-2:], 0),
                  "decode": pipe.vae_tile_for("decode", (args.size, args.size), 0)}
    print(f"{args.size}² image, real-size SD2.1 VAE with random weights, {args.dtype} on {args.device}; "
          f"auto picks {auto_tiles}", flush=True)
    seconds = {stage: {} for stage in STAGES}
    latent = torch.zeros(1, 4, side, side)
    figures = {"size": args.size, "dtype": args.dtype, "rounds": args.rounds, "order": ["auto", *args.tiles],
               "complete": False}
    path = None
    with torch.inference_mode():
        for round_ in range(args.rounds):
            for stage in STAGES:
                for config in ["auto", *args.tiles]:
                    tile = 0 if config == "auto" else config
                    probes.take(f"round {round_ + 1} {stage} {config}", [dtype_name(pipe.vae_dtype)])
                    if stage == "encode":
                        out, took = timed(pipe, lambda t=tile: pipe.encode(pixels, vae_tile=t))
                        if config == "auto":
                            latent = out
                    else:
                        out, took = timed(pipe, lambda t=tile, z=latent: pipe.decode(z, vae_tile=t))
                    del out
                    seconds[stage].setdefault(config, []).append(took)
                    print(f"round {round_ + 1} {stage} {config}: {took:.1f} s", flush=True)
                    figures.update(seconds=seconds, **summarise(seconds, auto_tiles, args.tiles))
                    path = write_result(f"vae-tile-speed-{torch.device(args.device).type}", figures,
                                        device=args.device, probe=probes, out=path)
    probes.take("after")
    figures["complete"] = True
    path = write_result(f"vae-tile-speed-{torch.device(args.device).type}", figures, device=args.device,
                        probe=probes, out=path)
    print("\n" + table(figures) + f"\n\nwritten {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
