"""Beyond the four stages: PiSAUpscale (the whole path in one node) and PiSAGuidanceGrid
(a λ_pix × λ_sem comparison sheet for the price of two UNet passes per tile)."""

from __future__ import annotations

import torch

from ..pisa_core import options
from ..pisa_core.errors import PiSAError
from ..pisa_core.geometry import check_images
from ..pisa_core.guidance import PISA, PIX, plan_passes
from ..pisa_core.options import node_input
from ..pisa_core.pipeline import check_options
from ..pisa_core.progress import STAGE_STEPS
from . import host, imageops
from .stages import (
    CATEGORY,
    COLOR_REF_INPUT,
    IMAGE_INPUT,
    META,
    MODEL_INPUT,
    REGION_INPUTS,
    branch_eps,
    check_model,
    decode_latent,
    encode_images,
    guided,
    region_lambdas,
    samples,
)

MAX_GRID = 64


class PiSAUpscale:
    DESCRIPTION = ("The whole PiSA-SR path in one node: enlarge, encode, one guided UNet step, decode, colour fix. "
                   "Same result as Encode → Dual Guidance → Decode; runs one UNet pass when λ_pix = λ_sem.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The super-resolved image(s).",)
    FUNCTION = "upscale"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "pisa_model": MODEL_INPUT,
            "image": IMAGE_INPUT,
            "upscale_by": node_input("upscale"),
            "lambda_pix": node_input("lambda_pix"),
            "lambda_sem": node_input("lambda_sem"),
            "color_fix": node_input("color_fix"),
            "resampling": node_input("resampling"),
            "latent_tile": node_input("latent_tile"),
            "latent_overlap": node_input("latent_overlap"),
            "vae_tile": node_input("vae_tile"),
            "process_size": node_input("process_size"),
        }, "optional": REGION_INPUTS}

    def upscale(self, pisa_model, image, upscale_by=options.default("upscale"),
                lambda_pix=options.default("lambda_pix"), lambda_sem=options.default("lambda_sem"),
                color_fix=options.default("color_fix"), resampling=options.default("resampling"),
                latent_tile=options.default("latent_tile"), latent_overlap=options.default("latent_overlap"),
                vae_tile=options.default("vae_tile"), process_size=options.default("process_size"), mask=None,
                lambda_pix_masked=options.default("lambda_pix_masked"),
                lambda_sem_masked=options.default("lambda_sem_masked")):
        check_model(pisa_model)
        images = check_images(image, "the image input")
        lambdas = region_lambdas(lambda_pix, lambda_sem, mask, lambda_pix_masked, lambda_sem_masked, images.shape[0])
        check_options(color_fix=color_fix, latent_tile=latent_tile, latent_overlap=latent_overlap, vae_tile=vae_tile)
        progress = host.HOST.progress(images.shape[0] * 3 * STAGE_STEPS)
        latent = encode_images(pisa_model, images, upscale_by, resampling, vae_tile, process_size, progress)
        z = latent["samples"]
        eps = branch_eps(pisa_model, z, latent_tile, latent_overlap, progress, branches=plan_passes(*lambdas).branches)
        z_high = guided(pisa_model, z, eps, *lambdas, plan=latent[META])
        return (decode_latent(pisa_model, latent, color_fix, vae_tile, None, progress, z=z_high),)


def parse_lambdas(text: str, name: str) -> list[float]:
    """'0, 0.5, 1' → [0.0, 0.5, 1.0]; commas or spaces; one clear error for anything else."""
    parts = [p for p in str(text).replace(";", ",").replace(",", " ").split() if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise PiSAError(f"{name} must be numbers separated by commas, like '0.5, 1.0, 1.5'; got {text!r}.") from None
    if not values:
        raise PiSAError(f"{name} is empty; give at least one value, like '1.0'.")
    for value in values:
        check_options(lambda_pix=value)
    return values


class PiSAGuidanceGrid:
    DESCRIPTION = ("Compares guidance settings: every (λ_pix, λ_sem) pair from the two lists, decoded and laid "
                   "out as one labelled sheet (rows λ_sem, columns λ_pix), plus the results as a batch. "
                   "The UNet runs only twice per tile for the whole grid.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE", "IMAGE")
    RETURN_NAMES = ("sheet", "images")
    OUTPUT_TOOLTIPS = ("One labelled comparison sheet per input image.",
                       "All results at full size, ordered image by image, row by row.")
    FUNCTION = "grid"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pisa_model": MODEL_INPUT,
                "latent": ("LATENT", {"tooltip": "z_L from PiSA Encode."}),
                "lambda_pix_values": ("STRING", {"default": "0.5, 1.0, 1.5", "tooltip":
                                      "λ_pix values, comma-separated (one column each)."}),
                "lambda_sem_values": ("STRING", {"default": "0.0, 0.5, 1.0, 1.5", "tooltip":
                                      "λ_sem values, comma-separated (one row each)."}),
                "color_fix": node_input("color_fix"),
                "cell_size": ("INT", {"default": 512, "min": 0, "max": 4096, "step": 16, "tooltip":
                              "Longest side of each cell in the sheet (0 = full size)."}),
                "latent_tile": node_input("latent_tile"),
                "latent_overlap": node_input("latent_overlap"),
                "vae_tile": node_input("vae_tile"),
            },
            "optional": {"color_reference": COLOR_REF_INPUT},
        }

    def grid(self, pisa_model, latent, lambda_pix_values="0.5, 1.0, 1.5", lambda_sem_values="0.0, 0.5, 1.0, 1.5",
             color_fix=options.default("color_fix"), cell_size=512, latent_tile=options.default("latent_tile"),
             latent_overlap=options.default("latent_overlap"), vae_tile=options.default("vae_tile"),
             color_reference=None):
        check_model(pisa_model)
        pix = parse_lambdas(lambda_pix_values, "lambda_pix_values")
        sem = parse_lambdas(lambda_sem_values, "lambda_sem_values")
        pairs = [(p, s) for s in sem for p in pix]
        if len(pairs) > MAX_GRID:
            raise PiSAError(f"The grid has {len(pairs)} cells; keep it to {MAX_GRID} or fewer.")
        check_options(latent_tile=latent_tile, latent_overlap=latent_overlap)
        z = samples(latent)
        progress = host.HOST.progress(z.shape[0] * (1 + len(pairs)) * STAGE_STEPS)
        eps = branch_eps(pisa_model, z, latent_tile, latent_overlap, progress, branches=(PIX, PISA))
        cells = [decode_latent(pisa_model, latent, color_fix, vae_tile, color_reference, progress,
                               z=guided(pisa_model, z, eps, p, s)) for p, s in pairs]  # each [B,H,W,C]
        labels = [f"pix {p:g}  sem {s:g}" for p, s in pairs]
        sheets = [imageops.comparison_sheet([cell[b] for cell in cells], labels, len(pix), cell_size)
                  for b in range(z.shape[0])]
        results = torch.stack([cell[b] for b in range(z.shape[0]) for cell in cells])
        return (torch.stack(sheets), results)
