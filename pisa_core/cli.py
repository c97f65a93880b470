"""`pisa-sr`: upscale images, convert and inspect PiSA-SR weights (and train, with the extra)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import options
from .errors import PiSAError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def _add_upscale_parser(sub) -> None:
    p = sub.add_parser("upscale", help="super-resolve images", description=(
        "Super-resolve images with PiSA-SR. INPUT may be files, folders or glob patterns."))
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("-o", "--output", required=True,
                   help="output folder (or a file name when there is a single input)")
    p.add_argument("--base", default=os.environ.get("PISA_SR_BASE"),
                   help="SD2.1-base: diffusers folder or single-file .safetensors/.ckpt (env PISA_SR_BASE)")
    p.add_argument("--weights", default=os.environ.get("PISA_SR_WEIGHTS"),
                   help="PiSA-SR weights: official pisa_sr.pkl or converted .safetensors (env PISA_SR_WEIGHTS)")
    for name in ("lambda_pix", "lambda_sem", "upscale", "color_fix", "latent_tile", "latent_overlap", "vae_tile",
                 "tile_batch", "geometry", "process_size", "resampling", "dtype"):
        options.add_cli_argument(p, name)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps (default: best available)")
    p.add_argument("--bit-depth", type=int, choices=(8, 16), default=None,
                   help="PNG bit depth of the output (default: that of the input)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the UNet and VAE (slow first image; faster later ones on GPUs)")
    options.add_cli_argument(p, "sample")
    options.add_cli_argument(p, "seed")
    p.set_defaults(func=_run_upscale)


def _add_weights_parsers(sub) -> None:
    p = sub.add_parser("convert", help="convert the official pisa_sr.pkl to .safetensors")
    p.add_argument("source")
    p.add_argument("destination")
    p.set_defaults(func=_run_convert)
    p = sub.add_parser("info", help="describe a PiSA-SR weights file")
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_run_info)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pisa-sr", description="PiSA-SR one-step diffusion super-resolution")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_upscale_parser(sub)
    _add_weights_parsers(sub)
    try:
        from .train.cli import add_train_subparsers
    except ImportError:  # the training extra is optional
        add_train_subparsers = None
    if add_train_subparsers is not None:
        add_train_subparsers(sub)
    return parser


def _output_path(output: Path, source: Path, single: bool) -> Path:
    if single and output.suffix.lower() in IMAGE_SUFFIXES:
        return output
    return output / (source.stem + ".png")


def _run_upscale(args) -> int:
    from tqdm import tqdm

    from .image_io import list_inputs, read_image, to_pil_8bit, write_image
    from .pipeline import PiSAPipeline

    if not args.base or not args.weights:
        raise PiSAError("--base and --weights are required (or set PISA_SR_BASE and PISA_SR_WEIGHTS)")
    files = list_inputs(args.inputs)
    output = Path(args.output)
    single = len(files) == 1
    state = _distributed_state()
    device = args.device if args.device is not None else (state.device if state else None)
    pipe = PiSAPipeline.from_files(args.base, args.weights, device=device, dtype=args.dtype, compile=args.compile)
    mine = _my_share(files, state)
    call = {name: getattr(args, name) for name in options.CALL_OPTIONS}
    bar = tqdm(mine, unit="img", disable=None, position=state.process_index if state else 0)
    for path in bar:
        bar.set_postfix_str(path.name)
        if state is not None:
            print(f"process {state.process_index}: {path.name}", flush=True)
        image, info = read_image(path)
        if args.geometry == "release" and info.bit_depth == 8 and info.channels == 3:
            batch = [to_pil_8bit(path)]  # byte-exact with the release's Pillow steps
        else:
            batch = image.unsqueeze(0)
        result = pipe(batch, **call)[0]
        write_image(_output_path(output, path, single), result, bit_depth=args.bit_depth or info.bit_depth)
    return 0


def _distributed_state():
    """accelerate's process state when started with `accelerate launch` on several processes."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import PartialState

    # without cpu=True accelerate ignores the launcher's processes on a machine without CUDA
    return PartialState(cpu=not torch.cuda.is_available())


def _my_share(files, state):
    if state is None:
        return files
    with state.split_between_processes(files) as share:
        return list(share)


def _run_convert(args) -> int:
    from .checkpoint import convert_pisa_weights

    convert_pisa_weights(args.source, args.destination)
    print(f"wrote {args.destination}")
    return 0


def _run_info(args) -> int:
    from .checkpoint import describe, load_pisa_weights

    info = describe(load_pisa_weights(args.file))
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"format: {info['format']}\nsource: {info['source']}")
    for name, fam in info["families"].items():
        groups = ", ".join(f"{k} {v}" for k, v in fam["groups"].items())
        kinds = ", ".join(f"{k} {v}" for k, v in fam["kinds"].items())
        print(f"{name}: rank {fam['rank']}, alpha {fam['alpha']:g} (scale {fam['scale']:g}); "
              f"{fam['modules']} modules ({groups}; {kinds}); {fam['parameters']:,} parameters")
    print(f"parameters: {info['parameters']:,}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except PiSAError as error:
        print(f"pisa-sr: error: {error}", file=sys.stderr)
        return 2
    except (FileNotFoundError, IsADirectoryError, PermissionError) as error:
        print(f"pisa-sr: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pisa-sr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
