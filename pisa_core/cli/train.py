"""`pisa-sr train`, `pisa-sr degrade` and `pisa-sr caption` (registered by pisa_core.cli.main through
add_train_subparsers)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import PiSAError
from ..train.config import add_config_arguments, config_from_args
from .support import run_command

DEGRADE_HELP = ("make LQ test images from HQ ones with the training degradation (Real-ESRGAN second order, "
                "release parameters), reproducible per seed and file")
CAPTION_HELP = ("write a same-stem .txt caption beside every training image with a local image-captioning model "
                "(transformers folder; nothing is downloaded)")


def add_train_subparsers(subparsers) -> None:
    train = subparsers.add_parser(
        "train", help="train the pixel (--stage pix) or semantic (--stage sem) LoRA",
        description="Train PiSA-SR's LoRAs on SD2.1-base. Stage pix first, then stage sem --init <pix weights>. "
                    "Multi-GPU: accelerate launch -m pisa_core.train ... (same options).")
    add_config_arguments(train)
    train.set_defaults(func=_run_train)

    degrade = subparsers.add_parser("degrade", help=DEGRADE_HELP, description=DEGRADE_HELP)
    add_degrade_arguments(degrade)
    degrade.set_defaults(func=_run_degrade)

    caption = subparsers.add_parser("caption", help=CAPTION_HELP, description=CAPTION_HELP)
    add_caption_arguments(caption)
    caption.set_defaults(func=_run_caption)


def _run_train(args) -> int:
    from ..train.trainer import train
    from .support import quiet_libraries

    config = config_from_args(args)
    quiet_libraries()
    train(config)
    return 0


# ----------------------------------------------------------------------------- degrade


def add_degrade_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="HQ images, folders (recursive) or .txt lists")
    parser.add_argument("-o", "--output", required=True, help="folder for the LQ images (PNG, same relative names)")
    parser.add_argument("--seed", type=int, default=0, help="seed; image i of the sorted list uses (seed, i)")
    parser.add_argument("--keep-size", action="store_true",
                        help="resize the LQ back to the HQ size (the training input) instead of 1/4 size")
    parser.add_argument("--hq-output", default=None,
                        help="also write the HQ images cropped to a multiple of 4 here (ground truth of the pairs)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing output files (default: skip them; inputs are never written over)")


def _run_degrade(args) -> int:
    return degrade_files(args.inputs, args.output, seed=args.seed, keep_size=args.keep_size,
                         hq_output=args.hq_output, overwrite=args.overwrite)


def _degrade_targets(inputs, output, hq_output) -> list[tuple[Path, Path, Path | None]]:
    """(image, LQ file, HQ file or None) in listing order: the same relative name as .png."""
    from ..train.data import list_images

    listed = []
    for source in inputs:
        root = Path(source) if Path(source).is_dir() else None
        for path in list_images(source):
            rel = (path.relative_to(root) if root is not None else Path(path.name)).with_suffix(".png")
            listed.append((path, Path(output) / rel, Path(hq_output) / rel if hq_output is not None else None))
    return listed


def degrade_files(inputs, output, *, seed: int = 0, keep_size: bool = False, hq_output=None,
                  overwrite: bool = False) -> int:
    """Degrade every listed image; image i (in listing order) uses the random stream (seed, i),
    whether or not the images before it are written. Outputs are checked before any work (never
    an input, no two images onto one file, folders writable); existing ones are kept unless
    `overwrite`; an image that cannot be read is reported and the others go on (exit code 2)."""
    from ..files.images import check_output_folder, write_image
    from ..train.data import load_rgb
    from ..train.degradation import DegradationConfig, degrade
    from .support import Tally, check_targets, remove_stale_temporaries, split_existing

    scale = DegradationConfig().scale
    listed = _degrade_targets(inputs, output, hq_output)
    lq_pairs = [(path, lq) for path, lq, _ in listed]
    hq_pairs = [(path, hq) for path, _, hq in listed if hq is not None]
    check_targets(lq_pairs + hq_pairs)
    single = len(listed) == 1
    lq_todo, lq_kept = split_existing(lq_pairs, overwrite, single=single)
    hq_todo, _ = split_existing(hq_pairs, overwrite, single=single)
    wanted = {*(lq for _, lq in lq_todo), *(hq for _, hq in hq_todo)}
    folders = list(dict.fromkeys(target.parent for target in wanted))
    for folder in folders:
        check_output_folder(folder)
    remove_stale_temporaries(folders)
    tally = Tally()
    for _, lq in lq_kept:
        tally.skip(lq)
    for index, (path, lq_target, hq_target) in enumerate(listed):
        if lq_target not in wanted and hq_target not in wanted:
            continue
        try:
            hq = load_rgb(path)
            h, w = (hq.shape[1] // scale) * scale, (hq.shape[2] // scale) * scale
            if h < scale or w < scale:
                raise PiSAError(f"Image '{path}' is smaller than {scale}x{scale} pixels.")
        except PiSAError as error:
            tally.fail(path, error)
            continue
        hq = hq[:, :h, :w]
        if lq_target in wanted:
            lq = degrade(hq, seed=seed, index=index, resize_back=keep_size)
            write_image(lq_target, lq.permute(1, 2, 0), overwrite=overwrite)
            tally.written.append(lq_target)
        if hq_target in wanted:
            write_image(hq_target, hq.permute(1, 2, 0), overwrite=overwrite)
    print(_degrade_summary(tally, output))
    return 2 if tally.failed else 0


def _degrade_summary(tally, output) -> str:
    return f"pisa-sr degrade: wrote {len(tally.written)} LQ image(s) to {output}{tally.outcome()}"


# ----------------------------------------------------------------------------- caption


def add_caption_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="DATA", help="training images: folders (recursive), .txt lists "
                                                                  "or image files")
    parser.add_argument("--model", required=True, help="local transformers image-captioning model folder (BLIP, "
                                                       "GIT or VisionEncoderDecoder)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing caption files (default: keep)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: 8)")
    parser.add_argument("--max-new-tokens", type=int, default=40, help="longest caption in tokens (default: 40)")
    parser.add_argument("--device", default="auto", help="'auto' (a GPU when present), 'cpu', 'cuda' or 'cuda:N'")


def _run_caption(args) -> int:
    from ..train.caption import caption_images
    from .support import quiet_libraries

    quiet_libraries()
    caption_images(args.inputs, args.model, overwrite=args.overwrite, batch_size=args.batch_size,
                   max_new_tokens=args.max_new_tokens, device=args.device)
    return 0


def degrade_main(argv=None) -> int:
    """Stand-alone entry of `pisa-sr degrade` (argv without the subcommand name)."""
    parser = argparse.ArgumentParser(prog="pisa-sr degrade", description=DEGRADE_HELP)
    add_degrade_arguments(parser)
    return run_command(parser, argv, _run_degrade)


def train_main(argv=None) -> int:
    """Stand-alone entry of `pisa-sr train` (argv without the subcommand name); used by
    `accelerate launch -m pisa_core.train`."""
    parser = argparse.ArgumentParser(prog="pisa-sr train", description="Train PiSA-SR's LoRAs.")
    add_config_arguments(parser)
    return run_command(parser, argv, _run_train)
