"""Every choice the front ends expose, in one place: mode lists, defaults, ranges, help texts, the
dtype table (which dtype `auto` means asks the machine: inference/hardware.py). The CLI's arguments
and the ComfyUI nodes' input specs are built from the `Option` records below, so a default or a
range is written exactly once.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field

import torch

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------- constants

LATENT_FACTOR = 8        # the SD VAE's latent is 8x smaller per side (three 2x downsamplings)
MIN_WORK_SIDE = 64       # 8 latent pixels: the UNet's three 2x downsamplings need at least this
VAE_TILE_AUTO = 0        # vae_tile 0: untiled where it fits, else the largest tile that fits (memory.auto_vae_tile)
MAX_OUTPUT_PIXELS = 64 * 1024 * 1024    # 8192² output: a guard against typos like upscale 80
# The small-input rule enlarges at most this much beyond the output (area), see geometry.working_size.
MAX_WORK_AREA_FACTOR = 4.0
# |λ_pix|, |λ_sem| (numbers and every value of a map) at most this: the paper's Table 1 varies them
# from 0 to 1.5; far beyond that the latent leaves what the VAE decodes (NaN/inf or noise).
LAMBDA_LIMIT = 10.0

COLOR_FIXES = ("adain", "wavelet", "none", "lab")  # appended last: saved ComfyUI workflows keep their choice
# --output-profile: "input" converts back to the input's ICC profile and embeds it; "srgb" writes sRGB, tagged.
OUTPUT_PROFILES = ("input", "srgb")
GEOMETRIES = ("exact", "release")
RESAMPLING = ("bicubic", "lanczos", "bilinear", "area", "nearest-exact")
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
DTYPE_CHOICES = ("auto", "fp16", "bf16", "fp32")  # the loader node's saved order


# ---------------------------------------------------------------------------------- dtypes and layout


def dtype_name(dtype: torch.dtype) -> str:
    return next(k for k, v in DTYPES.items() if v == dtype)


def auto_channels_last(device: torch.device, dtype: torch.dtype) -> bool:
    """NHWC convolutions where they pay: on GPUs, and for bf16 on CPUs (oneDNN's bf16 kernels want
    channels-last; bf16 in NCHW gains ~1.3x instead of ~4x). fp32 on the CPU stays NCHW, which
    keeps it bit-comparable with the release's layout."""
    return device.type == "cuda" or (device.type == "cpu" and dtype == torch.bfloat16)


# ---------------------------------------------------------------------------------- option records


@dataclass(frozen=True)
class Option:
    """One user-facing setting. `name` is the Python keyword; `node_name` the ComfyUI input name
    where it differs; min/max/step bound the node widget (and the CLI where set)."""

    name: str
    kind: type
    default: object
    help: str
    choices: tuple = ()
    min: float | None = None
    max: float | None = None
    step: float | None = None
    node_name: str | None = None
    slider: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


OPTIONS: dict[str, Option] = {o.name: o for o in (
    Option("upscale", float, 4.0, "Output size = input size × this factor (rounded). PiSA-SR was trained for 4×.",
           min=1.0, max=16.0, step=0.05, node_name="upscale_by"),
    Option("lambda_pix", float, 1.0, "Pixel-level guidance λ_pix: higher removes more degradation (noise, JPEG) "
           "and sharpens edges; too high over-smooths.", min=0.0, max=3.0, step=0.05, slider=True),
    Option("lambda_sem", float, 1.0, "Semantic-level guidance λ_sem: higher adds generated detail and texture; "
           "too high invents content and artifacts. 0 = pixel LoRA only.", min=0.0, max=3.0, step=0.05, slider=True),
    Option("lambda_pix_masked", float, 1.0, "λ_pix inside the mask (where it is 1; blended for soft masks). "
           "Outside the mask lambda_pix applies.", min=0.0, max=3.0, step=0.05, slider=True),
    Option("lambda_sem_masked", float, 0.3, "λ_sem inside the mask (where it is 1; blended for soft masks): low "
           "keeps faces, text and logos faithful. Outside the mask lambda_sem applies.", min=0.0, max=3.0,
           step=0.05, slider=True),
    Option("color_fix", str, "adain", "Colour correction against the enlarged low-quality image: adain (the "
           "release's default, mean/std per RGB channel), wavelet (keeps the input's low frequencies), none, or "
           "lab (mean/std of L*, a*, b* in CIELAB: brightness and colour matched without tinting).",
           choices=COLOR_FIXES),
    Option("resampling", str, "bicubic", "How the low-quality image is enlarged before the model "
           "(the release uses bicubic).", choices=RESAMPLING),
    Option("latent_tile", int, 96, "UNet tile size in latent pixels (×8 image pixels); tiling starts when the "
           "latent is larger than tile². Lower it if you run out of memory.", min=16, max=512, step=8),
    Option("latent_overlap", int, 32, "Overlap between UNet tiles in latent pixels (blended with Gaussian "
           "weights).", min=0, max=256, step=8),
    Option("vae_tile", int, VAE_TILE_AUTO, "VAE tile size in image pixels (a multiple of 8, at least 128); 0 = "
           "auto: untiled when the image fits in free memory (the fastest, on a GPU and a CPU), else the "
           "largest tile that fits (on a CPU 512 at most). Tiles give the untiled picture (whole-image GroupNorm "
           "statistics).",
           min=0, max=8192, step=64),
    Option("process_size", int, 512, "Outputs whose short side is below this are computed at this size and "
           "resized back (the model was trained at 512, as in the release); the enlargement is bounded for "
           f"thin images (working area at most {MAX_WORK_AREA_FACTOR:g}× process_size²). 0 = always work at "
           "the output size.", min=0, max=4096, step=8),
    Option("geometry", str, "exact", "exact: the output is exactly round(upscale × input size); release: the "
           "authors' Pillow resizing (whole factors only), for numerical parity.", choices=GEOMETRIES),
    Option("tile_batch", int, 1, "Latent tiles per UNet call (faster on GPUs with memory to spare).", min=1, max=64),
    Option("dtype", str, "auto", "Weight precision. auto: bf16 where the device computes it natively "
           "(GPUs of compute capability 8+, CPUs with AVX512-BF16/AMX), else fp16 on GPUs and fp32 on CPUs.",
           choices=DTYPE_CHOICES),
    Option("sample", bool, False, "Encode with a seeded posterior sample (as the release does) instead of the "
           "posterior mean."),
    Option("seed", int, 0, "Seed of the posterior sample (with sample on).", min=0, max=2**31 - 1),
    Option("output_profile", str, "input", "Colour profile of the outputs of input files with an embedded ICC "
           "profile: input (converted back from sRGB to the input's profile, which is embedded) or srgb (left in "
           "sRGB, the model's colour space, and tagged as sRGB). Inputs without a profile give untagged sRGB.",
           choices=OUTPUT_PROFILES),
)}

# The keyword arguments of PiSAPipeline.__call__ that come from OPTIONS (not dtype, a property of the
# loaded model, nor the masked λ, which front ends turn into λ maps with guidance.masked_lambda, nor
# output_profile, which concerns writing files).
CALL_OPTIONS = tuple(n for n in OPTIONS if n not in ("dtype", "lambda_pix_masked", "lambda_sem_masked",
                                                     "output_profile"))


def default(name: str):
    return OPTIONS[name].default


def add_cli_argument(parser: argparse.ArgumentParser, name: str, **overrides) -> None:
    """`--<name>` with the option's type, default, choices and help."""
    option = OPTIONS[name]
    kwargs: dict = {"default": option.default, "help": f"{option.help} (default: {option.default})"}
    if option.kind is bool:
        kwargs["action"] = "store_true"
    else:
        kwargs["type"] = option.kind
        if option.choices:
            kwargs["choices"] = option.choices
    kwargs.update(overrides)
    parser.add_argument(option.flag, **kwargs)
