"""`pisa-sr`: upscale images, convert and inspect PiSA-SR weights (and train, with the extra).

`pisa-sr upscale` checks everything it can before the model is loaded (options, device, every
input's header, masks, output names, output and working sizes, the output folder), never writes
over an input or a mask, nor over an existing output unless --overwrite, writes every image whole
or not at all, goes on past an input it cannot read, ends with one summary line (summary_line),
and records its settings in every PNG it writes (a JSON text chunk, SETTINGS_KEYWORD), which
`pisa-sr info OUT.png` prints.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .. import options
from ..errors import PiSAError
from ..inference.progress import Heartbeat
from .support import (
    Tally,
    check_targets,
    file_identity,
    input_failure,
    interruption,
    one_line,
    quiet_libraries,
    remove_stale_temporaries,
    run_command,
    split_existing,
)

log = logging.getLogger("pisa_core.cli")  # not __name__: "__main__" under python -m

STAGE_NAMES = ("VAE encode", "UNet", "VAE decode")  # the three model stages of PiSAPipeline.__call__
LONG_IMAGE_S = 10.0  # an image running longer than this gets a log line per finished stage
HEARTBEAT_S = 10.0   # the longest a running image or a model load goes without a progress line
MASKED_LAMBDAS = {"lambda_pix_masked": "lambda_pix", "lambda_sem_masked": "lambda_sem"}  # inside -> outside
# A mask may differ from its input's aspect ratio by rounding or by this much (log of the ratios).
MASK_ASPECT_TOLERANCE = 0.01


# ----------------------------------------------------------------------------- parser


def _add_upscale_parser(sub) -> None:
    p = sub.add_parser("upscale", help="super-resolve images", description=(
        "Super-resolve images with PiSA-SR. INPUT may be files, folders or glob patterns. Existing outputs are "
        "skipped (an error for a single input) unless --overwrite; an input is never written over."))
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("-o", "--output", required=True,
                   help="output folder (<input name>.png per input), or a file name (.png, .tif, .jpg, .webp) "
                        "when there is a single input")
    p.add_argument("--base", default=os.environ.get("PISA_SR_BASE"),
                   help="SD2.1-base: diffusers folder or single-file .safetensors/.ckpt (env PISA_SR_BASE)")
    p.add_argument("--weights", default=os.environ.get("PISA_SR_WEIGHTS"),
                   help="PiSA-SR weights: official pisa_sr.pkl or converted .safetensors (env PISA_SR_WEIGHTS)")
    p.add_argument("--decoder", default=os.environ.get("PISA_SR_DECODER") or None, metavar="FILE",
                   help="fast decoder: sd21_lwdecoder.pth from VOSR (arXiv 2604.03225, Apache-2.0), a half-width "
                        "SD2.1 VAE decoder doing a quarter of the decode work, or its .safetensors; its authors report "
                        "comparable quality on SD2.1 latents, not measured on PiSA-SR outputs here (default: the base "
                        "model's VAE decoder; env PISA_SR_DECODER)")
    for name in ("lambda_pix", "lambda_sem", "upscale", "color_fix", "latent_tile", "latent_overlap", "vae_tile",
                 "tile_batch", "geometry", "process_size", "resampling", "dtype"):
        options.add_cli_argument(p, name)
    p.add_argument("--mask", metavar="FILE_OR_FOLDER",
                   help="region-aware guidance: a mask drawn on the input (any size, the input's aspect ratio), or "
                        "a folder of masks matched to the inputs by file stem (photo.jpg takes masks/photo.png; an "
                        "input without one is processed without a mask). Inside the mask --lambda-pix-masked and "
                        "--lambda-sem-masked apply, outside --lambda-pix and --lambda-sem, blended for gray levels. "
                        "Inside: white in an image without transparency, opaque in one with transparency (an "
                        "alpha opaque everywhere counts as none)")
    for name in MASKED_LAMBDAS:  # None: not given (given without --mask is an error)
        options.add_cli_argument(p, name, default=None)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, xpu, mps (default: best available)")
    p.add_argument("--bit-depth", type=int, choices=(8, 16), default=None,
                   help="bit depth of the output; 16 needs a PNG or TIFF output (default: the input's where the "
                        "output format holds it, else 8)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing output files (inputs are never written over)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the UNet and VAE (slow first image; faster later ones on GPUs)")
    options.add_cli_argument(p, "sample")
    options.add_cli_argument(p, "seed")
    options.add_cli_argument(p, "output_profile")
    p.add_argument("--debug", action="store_true",
                   help="log the full traceback of an internal error (an input that failed because of a bug in "
                        "pisa-sr, not of the file), for a bug report")
    p.set_defaults(func=_run_upscale)


def _add_weights_parsers(sub) -> None:
    p = sub.add_parser("convert", help="convert PiSA-SR weights: official pisa_sr.pkl <-> .safetensors; or a fast "
                                       "decoder file (sd21_lwdecoder.pth) -> .safetensors")
    p.add_argument("source", help="pisa_sr.pkl, a .safetensors weights file, a training state "
                                  "(checkpoints/state_stepNNNNNN or its train.pt), or a fast decoder file")
    p.add_argument("destination", help="OUT.safetensors (this project's format) or OUT.pkl (the official "
                                       "pisa_sr.pkl layout, read by the authors' code)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing destination file")
    p.set_defaults(func=_run_convert)
    p = sub.add_parser("info", help="describe a PiSA-SR weights file or a fast decoder file, or print the settings a "
                                    "PNG written by pisa-sr upscale was made with")
    p.add_argument("file", help="pisa_sr.pkl / .safetensors weights, a fast decoder file, or a PNG output of "
                                "pisa-sr upscale")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_run_info)


def build_parser() -> argparse.ArgumentParser:
    from ..version import package_version

    parser = argparse.ArgumentParser(prog="pisa-sr", description="PiSA-SR one-step diffusion super-resolution")
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_upscale_parser(sub)
    _add_weights_parsers(sub)
    try:
        from .train import add_train_subparsers
    except ImportError:  # the training extra is optional
        add_train_subparsers = None
    if add_train_subparsers is not None:
        add_train_subparsers(sub)
    return parser


# ----------------------------------------------------------------------------- output planning


def _upscale_targets(files: list[Path], output: Path) -> list[tuple[Path, Path]]:
    """-o is a file name (by its image extension) for a single input, else a folder of <stem>.png."""
    from ..files.images import IMAGE_EXTENSIONS, WRITE_FORMATS

    as_file = output.suffix.lower() in (*IMAGE_EXTENSIONS, *WRITE_FORMATS) and not output.is_dir()
    if as_file and len(files) > 1:
        raise PiSAError(f"-o {output} names one file, but there are {len(files)} inputs; give a folder.")
    return [(source, output if as_file else output / (source.stem + ".png")) for source in files]


def match_masks(pairs: list[tuple[Path, Path]], mask: str | None) -> dict[Path, Path | None]:
    """input -> its mask (or None): one --mask file for every input, or from a --mask folder the
    image of the input's stem. Refused before any work: a --mask that does not exist, a folder
    without a mask for any input, two masks of one stem, a mask that is an input or an output."""
    from ..files.images import folder_images

    sources = [source for source, _ in pairs]
    if mask is None:
        return dict.fromkeys(sources)
    path = Path(mask)
    if path.is_file():
        found = dict.fromkeys(sources, path)
    elif path.is_dir():
        by_stem: dict[str, list[Path]] = {}
        for image in folder_images(path):
            by_stem.setdefault(image.stem, []).append(image)
        found = {}
        for source in sources:
            candidates = by_stem.get(source.stem, [])
            if len(candidates) > 1:
                names = ", ".join(c.name for c in candidates)
                raise PiSAError(f"--mask folder {str(path)!r} has {len(candidates)} masks for {source.name} "
                                f"({names}); keep one.")
            found[source] = candidates[0] if candidates else None
        if not any(found.values()):
            raise PiSAError(f"--mask folder {str(path)!r} has no mask for any input (masks are matched by file "
                            f"stem: {sources[0].name} takes {sources[0].stem}.png, .jpg, ...).")
    else:
        raise PiSAError(f"--mask {mask!r} does not exist (expected a mask image or a folder of masks).")
    inputs = {file_identity(source) for source in sources}
    masks = {file_identity(m): m for m in found.values() if m is not None}
    for m in masks.values():
        if file_identity(m) in inputs:
            raise PiSAError(f"The mask {str(m)!r} is also an input; move it out of the input folder.")
    for _, target in pairs:
        if file_identity(target) in masks:
            raise PiSAError(f"The output {str(target)!r} is a mask file; masks are never written over "
                            "(choose another -o).")
    return found


# ----------------------------------------------------------------------------- validation


@dataclass
class Job:
    """One input and what will be made of it."""

    source: Path
    target: Path
    in_size: tuple[int, int]    # (h, w)
    out_size: tuple[int, int]
    work_size: tuple[int, int]  # the size the model computes at (the small-input rule)
    bit_depth: int
    release_pil: bool           # fed as 8-bit RGB Pillow image (byte-exact with the release geometry)
    mask: Path | None = None    # region mask of --mask


def _check_upscale_options(args) -> None:
    """The options the core would only refuse after the model is loaded; one line naming the flag."""
    from ..inference.guidance import check_lambda
    from ..inference.pipeline import check_options

    for name in MASKED_LAMBDAS:
        if getattr(args, name) is None:
            setattr(args, name, options.default(name))
        elif args.mask is None:
            raise PiSAError(f"{options.OPTIONS[name].flag} applies inside a mask; give --mask FILE or FOLDER.")
    for name in ("lambda_pix", "lambda_sem", *MASKED_LAMBDAS):
        check_lambda(getattr(args, name), options.OPTIONS[name].flag)
    check_options(color_fix=args.color_fix, latent_tile=args.latent_tile, latent_overlap=args.latent_overlap,
                  vae_tile=args.vae_tile, tile_batch=args.tile_batch)
    if not (math.isfinite(args.upscale) and args.upscale > 0):
        raise PiSAError(f"--upscale must be a positive finite number; got {args.upscale:g}.")
    if args.geometry == "release" and args.upscale != int(args.upscale):
        raise PiSAError(f"--geometry release takes whole --upscale factors only; got {args.upscale:g}.")
    for name in ("process_size", "seed"):
        option, value = options.OPTIONS[name], getattr(args, name)
        if not option.min <= value <= option.max:
            raise PiSAError(f"{option.flag} must be between {option.min:g} and {option.max:g}; got {value}.")


class _PlanError(PiSAError):
    """An output the options make impossible (too large, a format that cannot hold it): a flag to
    change, so it stops the run before any work, unlike an unreadable input."""


def _plan_job(source: Path, target: Path, mask: Path | None, args, mask_sizes: dict) -> Job:
    """Header check (PiSAError: the input cannot be read), then its mask, the sizes, format and bit
    depth of its output (_PlanError)."""
    from ..files.images import SIXTEEN_BIT_FORMATS, output_format, probe_image
    from ..inference.geometry import output_size, working_size

    info, (h, w) = probe_image(source)
    if mask is not None:
        _check_mask_shape(mask, source, (h, w), mask_sizes)
    try:
        out = output_size(h, w, args.upscale)
    except PiSAError as error:
        raise _PlanError(f"{source}: {str(error).rstrip('.')} (--upscale).") from None
    work = working_size(*out, args.process_size)
    if work[0] * work[1] > options.MAX_OUTPUT_PIXELS:
        raise _PlanError(f"{source}: the model would work at {work[1]}x{work[0]} for this {w}x{h} input, above the "
                         f"{options.MAX_OUTPUT_PIXELS // 2**20} MP limit; lower --process-size.")
    try:
        depth = args.bit_depth or info.bit_depth
        if args.bit_depth is None and output_format(target) not in SIXTEEN_BIT_FORMATS:
            depth = 8  # the input's 16 bits do not fit this format; only an explicit --bit-depth 16 is an error
        output_format(target, depth, info.channels)
    except PiSAError as error:
        raise _PlanError(str(error)) from None
    release_pil = args.geometry == "release" and info.bit_depth == 8 and info.channels == 3
    return Job(source, target, (h, w), out, work, depth, release_pil, mask)


def _check_mask_shape(mask: Path, source: Path, size: tuple[int, int], mask_sizes: dict) -> None:
    """The mask decodes (read once per file, its size kept in mask_sizes) and has the input's
    aspect ratio, up to rounding or MASK_ASPECT_TOLERANCE; _PlanError otherwise."""
    from ..files.images import read_mask

    if mask not in mask_sizes:
        try:
            mask_sizes[mask] = tuple(read_mask(mask).shape)
        except PiSAError as error:
            raise _PlanError(f"--mask: {error}") from None
    (mh, mw), (h, w) = mask_sizes[mask], size
    rounding = abs(mh * w - mw * h) <= (h + w) / 2  # a mask resized from the input, sides rounded
    if not (rounding or abs(math.log((mw / mh) / (w / h))) <= MASK_ASPECT_TOLERANCE):
        raise _PlanError(f"--mask {mask}: the mask is {mw}x{mh}, which does not have the shape of the input "
                         f"{source} ({w}x{h}); draw the mask on the input (any size, the same aspect ratio).")


def _plan_jobs(pairs: list[tuple[Path, Path]], masks: dict[Path, Path | None], args, single: bool,
               tally: Tally) -> list[Job]:
    """Jobs for the inputs whose header reads; an unreadable input is reported and left out
    (an error when it is the only input). An impossible output or a bad mask (_PlanError) stops
    the run here, before the model loads."""
    jobs, mask_sizes = [], {}
    for source, target in pairs:
        if args.mask is not None and masks[source] is None:
            log.info("pisa-sr: note: %s has no mask in %s (no image named %s.*); it is processed without one",
                     source, args.mask, source.stem)
        try:
            jobs.append(_plan_job(source, target, masks[source], args, mask_sizes))
        except _PlanError:
            raise
        except Exception as error:  # noqa: BLE001 - one input's failure is that input's alone
            if single and isinstance(error, PiSAError):
                raise
            tally.fail(source, input_failure(source, error, args.debug))
    return jobs


# ----------------------------------------------------------------------------- running


class _StageLog:
    """The progress lines of one image: `with _StageLog(label) as progress: pipe(..., progress=progress)`.
    progress(done, total) -> a line per finished model stage once the image has run longer than
    LONG_IMAGE_S (short images get only their completion line), and a heartbeat line every
    `interval` seconds naming the stage in progress, so a stage that reports nothing for long (one
    huge tile) still shows every HEARTBEAT_S that the run is alive."""

    def __init__(self, label: str, interval: float = HEARTBEAT_S):
        self.label, self.start, self.stage, self.fraction = label, time.perf_counter(), 0, 0.0
        self.heartbeat = Heartbeat(interval, self._beat)

    def __enter__(self):
        self.heartbeat.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.heartbeat.__exit__(*exc)

    def __call__(self, done: int, total: int) -> None:
        self.fraction = done / max(1, total)
        stage = done * len(STAGE_NAMES) // max(1, total)
        if stage <= self.stage:
            return
        self.stage = stage
        elapsed = time.perf_counter() - self.start
        if elapsed >= LONG_IMAGE_S:
            log.info("pisa-sr: %s: %s done (stage %d of %d), %.0f s", self.label, STAGE_NAMES[stage - 1], stage,
                     len(STAGE_NAMES), elapsed)

    def _beat(self, _since_enter: float) -> None:
        running = min(self.stage, len(STAGE_NAMES) - 1)
        log.info("pisa-sr: %s: %s running (stage %d of %d), %d %% of the image, %.0f s", self.label,
                 STAGE_NAMES[running], running + 1, len(STAGE_NAMES), 100 * self.fraction,
                 time.perf_counter() - self.start)


def _upscale_one(pipe, job: Job, call: dict, args, label: str):
    """Read and super-resolve one input -> ([H, W, C] in [0, 1], its ImageInfo). With a mask, λ are
    maps over the input: the masked λ inside, the plain ones outside (the pipeline resizes them
    like the image)."""
    from ..files.images import read_image, read_mask, to_pil_8bit
    from ..inference.guidance import masked_lambda

    image, info = read_image(job.source)
    batch = [to_pil_8bit(job.source)] if job.release_pil else image.unsqueeze(0)
    if job.mask is not None:
        mask = read_mask(job.mask)
        call = {**call, **{plain: masked_lambda(call[plain], getattr(args, inside), mask)
                           for inside, plain in MASKED_LAMBDAS.items()}}
    with _StageLog(label) as progress:
        return pipe(batch, progress=progress, **call)[0], info


def _model_file(path) -> dict:
    """{"file": name, "bytes": size} of a model file, or of a diffusers folder (all its files)."""
    path = Path(path)
    if path.is_dir():
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    else:
        size = path.stat().st_size
    return {"file": path.name, "bytes": size}


def run_settings(args, pipe) -> dict:
    """What every output of this run shares: software, model files, dtype and device, the options."""
    import torch

    from ..model.fast_decoder import decoder_setting
    from ..version import package_version

    return {"version": package_version(), "torch": torch.__version__, "base": _model_file(args.base),
            "weights": _model_file(args.weights), "decoder": decoder_setting(pipe.decoder),
            "dtype": options.dtype_name(pipe.dtype), "device": str(pipe.device),
            **{name: getattr(args, name) for name in options.CALL_OPTIONS}}


def image_settings(shared: dict, job: Job, args) -> dict:
    """The settings recorded in one output: the run's, plus its input, sizes, bit depth and mask."""
    settings = {"input": job.source.name, "input_size": [job.in_size[1], job.in_size[0]],
                "output_size": [job.out_size[1], job.out_size[0]], "bit_depth": job.bit_depth,
                "mask": None if job.mask is None else job.mask.name}
    if job.mask is not None:
        settings.update({name: getattr(args, name) for name in MASKED_LAMBDAS})
    return {**settings, **shared}


def _run_jobs(pipe, jobs: list[Job], args, tally: Tally, state) -> None:
    """Every job in turn. An input that fails (unreadable pixels, out of memory) is reported and
    the others go on; a failed write stops the run (the next image would fail the same way)."""
    from ..files.images import SETTINGS_KEYWORD, SRGB, write_image
    from ..inference import memory

    call = {name: getattr(args, name) for name in options.CALL_OPTIONS}
    shared = run_settings(args, pipe)
    for number, job in enumerate(jobs, 1):
        label = f"[{number}/{len(jobs)}] {job.source.name}"
        if state is not None:
            print(f"pisa-sr: process {state.process_index}: {job.source.name}", flush=True)
        tic = time.perf_counter()
        try:
            result, info = _upscale_one(pipe, job, call, args, label)
        except Exception as error:  # noqa: BLE001 - one input's failure is that input's alone
            if isinstance(error, (RuntimeError, MemoryError)) and memory.is_oom(error):
                memory.release_cached_memory()
                error = PiSAError(f"{job.source}: out of memory; lower --latent-tile or --vae-tile.")
            tally.fail(job.source, input_failure(job.source, error, args.debug))
            continue
        text = {SETTINGS_KEYWORD: json.dumps(image_settings(shared, job, args), ensure_ascii=False)}
        profile = info.icc_profile if args.output_profile == "input" else SRGB
        try:
            write_image(job.target, result, bit_depth=job.bit_depth, overwrite=args.overwrite, text=text,
                        icc_profile=profile)
        except OSError:
            raise  # the folder or the disk: the next image would fail the same way
        except Exception as error:  # noqa: BLE001 - this image's data (its profile, ...): its failure alone
            tally.fail(job.source, input_failure(job.source, error, args.debug))
            continue
        seconds = time.perf_counter() - tic
        tally.written.append(job.target)
        tally.seconds += seconds
        log.info("pisa-sr: %s -> %s (%s%s), %.1f s", label, job.target, _size_text(job.in_size, job.out_size),
                 _work_text(job), seconds)


def _size_text(in_size, out_size) -> str:
    return f"{in_size[1]}x{in_size[0]} to {out_size[1]}x{out_size[0]}"


def _work_text(job: Job) -> str:
    return "" if job.work_size == job.out_size else f", computed at {job.work_size[1]}x{job.work_size[0]}"


def _load_pipeline(args, device, tally: Tally):
    from ..inference.pipeline import PiSAPipeline

    quiet_libraries()
    tic = time.perf_counter()
    try:
        with Heartbeat(HEARTBEAT_S, lambda seconds: log.info("pisa-sr: loading the model, %.0f s", seconds)):
            pipe = PiSAPipeline.from_files(args.base, args.weights, device=device, dtype=args.dtype,
                                           compile=args.compile, decoder=args.decoder_file)
    except (PiSAError, OSError) as error:
        raise PiSAError(f"could not load the model: {one_line(error)}") from None
    tally.load_seconds = time.perf_counter() - tic
    tally.model = f"{options.dtype_name(pipe.dtype)} on {pipe.device}"
    return pipe


# ----------------------------------------------------------------------------- reporting


def summary_line(tally: Tally) -> str:
    """`pisa-sr: 3 images written, 4.87 s per image, model loaded in 6.2 s (bf16 on cpu)`, then what
    was skipped, what failed and what stopped the run (Tally.outcome). Benchmarks parse the first
    part: keep its wording."""
    count = len(tally.written)
    parts = [f"{count} image{'' if count == 1 else 's'} written"]
    if count:
        parts.append(f"{tally.seconds / count:.2f} s per image")
    if tally.load_seconds is not None:
        parts.append(f"model loaded in {tally.load_seconds:.1f} s ({tally.model})")
    return "pisa-sr: " + ", ".join(parts) + tally.outcome()


def _list_inputs(args, tally: Tally) -> list[Path]:
    """The input files of every INPUT argument, each argument listed on its own: with several, one
    that cannot be listed (it does not exist, its folder cannot be read) is a failed input and the
    others go on. Folder entries that are not images go to tally.not_images."""
    from ..files.images import list_inputs_and_skipped

    files: dict[tuple, Path] = {}
    for pattern in args.inputs:
        try:
            found, left = list_inputs_and_skipped([pattern])
        except Exception as error:  # noqa: BLE001 - one input's failure is that input's alone
            if len(args.inputs) == 1 and isinstance(error, PiSAError):
                raise
            tally.fail(Path(pattern), input_failure(pattern, error, args.debug))
            continue
        for path in found:
            files.setdefault(file_identity(path), path)
        tally.not_images += [item for item in left if item not in tally.not_images]
    return list(files.values())


def _plan_upscale(args, state, tally: Tally) -> list[Job]:
    """Everything checked before the model loads: options, output names (never an input, no
    collisions), existing outputs, every input's header and planned sizes, the output folders."""
    from ..files.images import IMAGE_EXTENSIONS, check_output_folder

    _check_upscale_options(args)
    files = _list_inputs(args, tally)
    if not files:
        return []  # every INPUT failed, each named in the tally
    for source, reason in tally.not_images:
        log.info("pisa-sr: skipping %s: %s (inputs are %s)", source, reason, ", ".join(IMAGE_EXTENSIONS))
    pairs = _upscale_targets(files, Path(args.output))
    check_targets(pairs)
    masks = match_masks(pairs, args.mask)
    single = len(files) == 1 and not tally.failed
    todo, skipped = split_existing(_my_share(pairs, state), args.overwrite, single=single)
    for _, target in skipped:
        tally.skip(target)
    jobs = _plan_jobs(todo, masks, args, single, tally)
    folders = list(dict.fromkeys(job.target.parent for job in jobs))
    for folder in folders:
        check_output_folder(folder)
    remove_stale_temporaries(folders)
    return jobs


def _run_upscale(args) -> int:
    """Plan, load, run; the summary line comes last whatever happened, naming what stopped the run."""
    tally = Tally()
    try:
        jobs, state, device = _prepare_upscale(args, tally)
        if jobs:
            pipe = _load_pipeline(args, device, tally)
            _run_jobs(pipe, jobs, args, tally, state)
    except (PiSAError, OSError) as error:
        tally.stopped = f"failed: {one_line(error)}"
        raise
    except KeyboardInterrupt as error:
        tally.stopped = f"interrupted ({interruption(error)[0]})"
        raise
    finally:
        print(summary_line(tally), flush=True)
    return 2 if tally.failed else 0


def _prepare_upscale(args, tally: Tally):
    """(jobs, distributed state or None, device): everything before the model loads (the fast
    decoder file is read and checked here, before the base model)."""
    from ..inference.hardware import parse_device
    from ..model.fast_decoder import load_decoder

    if not args.base or not args.weights:
        raise PiSAError("--base and --weights are required (or set PISA_SR_BASE and PISA_SR_WEIGHTS)")
    args.decoder_file = load_decoder(args.decoder) if args.decoder else None
    state = _distributed_state()
    device = parse_device(args.device if args.device is not None else (state.device if state else None))
    return _plan_upscale(args, state, tally), state, device


def _distributed_state():
    """accelerate's process state when started with `accelerate launch` on several processes."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch
    from accelerate import PartialState

    # without cpu=True accelerate ignores the launcher's processes on a machine without CUDA
    return PartialState(cpu=not torch.cuda.is_available())


def _my_share(items: list, state) -> list:
    if state is None:
        return list(items)
    with state.split_between_processes(list(items)) as share:
        return list(share)


# ----------------------------------------------------------------------------- weights


def _run_convert(args) -> int:
    from ..files.images import check_output_folder
    from ..model.checkpoint import convert_pisa_weights, writer_for
    from ..model.fast_decoder import convert_decoder, is_decoder_file

    destination = Path(args.destination)
    decoder = is_decoder_file(args.source)
    if not decoder:
        writer_for(destination)  # a wrong suffix fails before anything is read
    if destination.exists() and not args.overwrite:
        raise PiSAError(f"The destination {str(destination)!r} exists; pass --overwrite to replace it.")
    check_output_folder(destination.parent, "destination folder")
    remove_stale_temporaries([destination.parent])
    (convert_decoder if decoder else convert_pisa_weights)(args.source, destination)
    print(f"pisa-sr: wrote {destination}")
    return 0


def _run_info(args) -> int:
    from ..files.kinds import IMAGE, sniff_file
    from ..model.checkpoint import describe, load_pisa_weights
    from ..model.fast_decoder import decoder_text, describe_decoder, is_decoder_file, load_decoder

    path = Path(args.file)
    kind = sniff_file(path) if path.is_file() else None
    if kind is not None and kind.kind == IMAGE:
        if kind.name != "PNG":
            raise PiSAError(f"{str(path)!r} is {kind.describe()}, not PiSA-SR weights, and it carries no pisa-sr "
                            "settings (only the PNG outputs of pisa-sr upscale record them).")
        return _print_settings(path, args.json)
    if is_decoder_file(path):
        info = describe_decoder(load_decoder(path))
        print(json.dumps(info, indent=2) if args.json else decoder_text(info))
        return 0
    info = describe(load_pisa_weights(path))
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


def _setting_text(value) -> str:
    if isinstance(value, dict) and set(value) == {"file", "bytes"}:
        return f"{value['file']} ({value['bytes']:,} bytes)"
    if isinstance(value, list):
        return "x".join(str(v) for v in value)
    if value is None:
        return "none"
    return str(value).lower() if isinstance(value, bool) else str(value)


def _print_settings(path: Path, as_json: bool) -> int:
    from ..files.images import read_png_settings

    settings = read_png_settings(path)
    if as_json:
        print(json.dumps(settings, indent=2, ensure_ascii=False))
        return 0
    print(f"image: {path}")
    for key, value in settings.items():
        print(f"{key}: {_setting_text(value)}")
    return 0


# ----------------------------------------------------------------------------- entry


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser(), argv, lambda args: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
