"""Beyond the four stages: PiSAUpscale (the whole path in one node) and PiSAGuidanceGrid
(a λ_pix × λ_sem comparison sheet for the price of two UNet passes per tile)."""

from __future__ import annotations

import torch

from ..pisa_core.errors import PiSAError
from ..pisa_core.guidance import PISA, PIX, plan_passes
from . import host, imageops
from .stages import (
    CATEGORY,
    COLOR_FIX_INPUT,
    COLOR_REF_INPUT,
    LAMBDA_PIX_INPUT,
    LAMBDA_SEM_INPUT,
    LATENT_OVERLAP_INPUT,
    LATENT_TILE_INPUT,
    MODEL_INPUT,
    PROCESS_SIZE_INPUT,
    RESAMPLING_INPUT,
    STAGE_STEPS,
    UPSCALE_INPUT,
    VAE_TILE_INPUT,
    _check_model,
    _samples,
    branch_eps,
    decode_latent,
    encode_images,
    guided,
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
            "image": ("IMAGE", {"tooltip": "The low-quality image(s) to super-resolve."}),
            "upscale_by": UPSCALE_INPUT,
            "lambda_pix": LAMBDA_PIX_INPUT,
            "lambda_sem": LAMBDA_SEM_INPUT,
            "color_fix": COLOR_FIX_INPUT,
            "resampling": RESAMPLING_INPUT,
            "latent_tile": LATENT_TILE_INPUT,
            "latent_overlap": LATENT_OVERLAP_INPUT,
            "vae_tile": VAE_TILE_INPUT,
            "process_size": PROCESS_SIZE_INPUT,
        }}

    def upscale(self, pisa_model, image, upscale_by=4.0, lambda_pix=1.0, lambda_sem=1.0, color_fix="adain",
                resampling="bicubic", latent_tile=96, latent_overlap=32, vae_tile=1024, process_size=512):
        _check_model(pisa_model)
        rgb = imageops.to_rgb_chw(image)
        progress = host.Progress(rgb.shape[0] * 3 * STAGE_STEPS)
        latent = encode_images(pisa_model, rgb, upscale_by, resampling, vae_tile, progress, process_size)
        z = latent["samples"]
        eps = branch_eps(pisa_model, z, latent_tile, latent_overlap, progress,
                         branches=plan_passes(lambda_pix, lambda_sem).branches)
        out = dict(latent)
        out["samples"] = guided(pisa_model, z, eps, lambda_pix, lambda_sem)
        images = decode_latent(pisa_model, out, out["samples"], color_fix, vae_tile, None, progress)
        return (imageops.to_image(images),)


def parse_lambdas(text: str, name: str) -> list[float]:
    """'0, 0.5, 1' → [0.0, 0.5, 1.0]; commas or spaces; one clear error for anything else."""
    parts = [p for p in str(text).replace(";", ",").replace(",", " ").split() if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise PiSAError(f"{name} must be numbers separated by commas, like '0.5, 1.0, 1.5'; got {text!r}.") from None
    if not values:
        raise PiSAError(f"{name} is empty; give at least one value, like '1.0'.")
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
                "color_fix": COLOR_FIX_INPUT,
                "cell_size": ("INT", {"default": 512, "min": 0, "max": 4096, "step": 16, "tooltip":
                              "Longest side of each cell in the sheet (0 = full size)."}),
                "latent_tile": LATENT_TILE_INPUT,
                "latent_overlap": LATENT_OVERLAP_INPUT,
                "vae_tile": VAE_TILE_INPUT,
            },
            "optional": {"color_reference": COLOR_REF_INPUT},
        }

    def grid(self, pisa_model, latent, lambda_pix_values="0.5, 1.0, 1.5", lambda_sem_values="0.0, 0.5, 1.0, 1.5",
             color_fix="adain", cell_size=512, latent_tile=96, latent_overlap=32, vae_tile=1024,
             color_reference=None):
        _check_model(pisa_model)
        pix = parse_lambdas(lambda_pix_values, "lambda_pix_values")
        sem = parse_lambdas(lambda_sem_values, "lambda_sem_values")
        pairs = [(p, s) for s in sem for p in pix]
        if len(pairs) > MAX_GRID:
            raise PiSAError(f"The grid has {len(pairs)} cells; keep it to {MAX_GRID} or fewer.")
        z = _samples(latent)
        batch = z.shape[0]
        progress = host.Progress(batch * (1 + len(pairs)) * STAGE_STEPS)
        eps = branch_eps(pisa_model, z, latent_tile, latent_overlap, progress, branches=(PIX, PISA))
        sheets, results = [], []
        for b in range(batch):
            one = dict(latent)
            one.pop("pisa", None)
            meta = latent.get("pisa")
            if isinstance(meta, dict):
                one["pisa"] = dict(meta, lq=meta["lq"][b:b + 1])
            ref = None if color_reference is None else imageops.match_batch(color_reference, batch, "color_reference")[b:b + 1]
            cells = []
            for p, s in pairs:
                z_high = guided(pisa_model, z[b:b + 1], eps[b:b + 1], p, s)
                cells.append(decode_latent(pisa_model, one, z_high, color_fix, vae_tile, ref, progress)[0])
            labels = [f"pix {p:g}  sem {s:g}" for p, s in pairs]
            sheets.append(imageops.comparison_sheet(cells, labels, len(pix), cell_size))
            results.extend(cells)
        return (torch.stack(sheets), imageops.to_image(torch.stack(results)))
