"""Beyond the four stages: PiSAUpscale (the whole path in one node) and PiSAGuidanceGrid
(a λ_pix × λ_sem comparison sheet for the price of two UNet passes per tile)."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..pisa_core import options
from ..pisa_core.errors import PiSAError
from ..pisa_core.inference.geometry import check_images
from ..pisa_core.inference.guidance import PISA, PIX, plan_passes
from ..pisa_core.inference.pipeline import check_options
from ..pisa_core.inference.progress import STAGE_STEPS
from . import host, imageops
from .schema import (
    color_reference_input,
    image_input,
    model_input,
    node_schema,
    option_input,
    region_inputs,
    widget,
)
from .stages import (
    META,
    branch_eps,
    check_model,
    decode_latent,
    encode_images,
    guided,
    region_lambdas,
    samples,
    settings_error,
)

MAX_GRID = 64


class PiSAUpscale(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return node_schema(
            node_id="PiSAUpscale", display_name="PiSA-SR Upscale",
            description=("The whole PiSA-SR path in one node: enlarge, encode, one guided UNet step, decode, colour "
                         "fix. Same result as Encode → Dual Guidance → Decode; runs one UNet pass when "
                         "λ_pix = λ_sem."),
            inputs=[model_input(), image_input(), option_input("upscale"), option_input("lambda_pix"),
                    option_input("lambda_sem"), option_input("color_fix"), option_input("resampling", advanced=True),
                    option_input("latent_tile", advanced=True), option_input("latent_overlap", advanced=True),
                    option_input("vae_tile", advanced=True), option_input("process_size", advanced=True),
                    *region_inputs()],
            outputs=[io.Image.Output(display_name="image", tooltip="The super-resolved image(s).")])

    @classmethod
    def validate_inputs(cls, latent_tile=None, latent_overlap=None, vae_tile=None):
        return settings_error(latent_tile=latent_tile, latent_overlap=latent_overlap, vae_tile=vae_tile)

    @classmethod
    def execute(cls, pisa_model, image, upscale_by=options.default("upscale"),
                lambda_pix=options.default("lambda_pix"), lambda_sem=options.default("lambda_sem"),
                color_fix=options.default("color_fix"), resampling=options.default("resampling"),
                latent_tile=options.default("latent_tile"), latent_overlap=options.default("latent_overlap"),
                vae_tile=options.default("vae_tile"), process_size=options.default("process_size"), mask=None,
                lambda_pix_masked=options.default("lambda_pix_masked"),
                lambda_sem_masked=options.default("lambda_sem_masked")) -> io.NodeOutput:
        check_model(pisa_model)
        images = check_images(image, "the image input")
        lambdas = region_lambdas(lambda_pix, lambda_sem, mask, lambda_pix_masked, lambda_sem_masked, images.shape[0])
        check_options(color_fix=color_fix, latent_tile=latent_tile, latent_overlap=latent_overlap, vae_tile=vae_tile)
        progress = host.HOST.progress(images.shape[0] * 3 * STAGE_STEPS)
        latent = encode_images(pisa_model, images, upscale_by, resampling, vae_tile, process_size, progress)
        z = latent["samples"]
        eps = branch_eps(pisa_model, z, latent_tile, latent_overlap, progress, branches=plan_passes(*lambdas).branches)
        z_high = guided(pisa_model, z, eps, *lambdas, plan=latent[META])
        return io.NodeOutput(decode_latent(pisa_model, latent, color_fix, vae_tile, None, progress, z=z_high))


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


def grid_pairs(lambda_pix_values: str, lambda_sem_values: str) -> tuple[list[float], list[tuple[float, float]]]:
    """The grid's columns (λ_pix) and its (λ_pix, λ_sem) cells, row by row."""
    pix = parse_lambdas(lambda_pix_values, "lambda_pix_values")
    sem = parse_lambdas(lambda_sem_values, "lambda_sem_values")
    pairs = [(p, s) for s in sem for p in pix]
    if len(pairs) > MAX_GRID:
        raise PiSAError(f"The grid has {len(pairs)} cells; keep it to {MAX_GRID} or fewer.")
    return pix, pairs


class PiSAGuidanceGrid(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return node_schema(
            node_id="PiSAGuidanceGrid", display_name="PiSA-SR Guidance Grid",
            description=("Compares guidance settings: every (λ_pix, λ_sem) pair from the two lists, decoded and laid "
                         "out as one labelled sheet (rows λ_sem, columns λ_pix), plus the results as a batch. "
                         "The UNet runs only twice per tile for the whole grid."),
            inputs=[model_input(), io.Latent.Input("latent", tooltip="z_L from PiSA Encode."),
                    widget(io.String, "lambda_pix_values", default="0.5, 1.0, 1.5",
                           tooltip="λ_pix values, comma-separated (one column each)."),
                    widget(io.String, "lambda_sem_values", default="0.0, 0.5, 1.0, 1.5",
                           tooltip="λ_sem values, comma-separated (one row each)."),
                    option_input("color_fix"),
                    widget(io.Int, "cell_size", default=512, min=0, max=4096, step=16,
                           tooltip="Longest side of each cell in the sheet (0 = full size)."),
                    option_input("latent_tile", advanced=True), option_input("latent_overlap", advanced=True),
                    option_input("vae_tile", advanced=True), color_reference_input()],
            outputs=[io.Image.Output(display_name="sheet", tooltip="One labelled comparison sheet per input image."),
                     io.Image.Output(display_name="images",
                                     tooltip="All results at full size, ordered image by image, row by row.")])

    @classmethod
    def validate_inputs(cls, lambda_pix_values=None, lambda_sem_values=None, latent_tile=None, latent_overlap=None,
                        vae_tile=None):
        if lambda_pix_values is not None and lambda_sem_values is not None:
            try:
                grid_pairs(lambda_pix_values, lambda_sem_values)
            except PiSAError as error:
                return str(error)
        return settings_error(latent_tile=latent_tile, latent_overlap=latent_overlap, vae_tile=vae_tile)

    @classmethod
    def execute(cls, pisa_model, latent, lambda_pix_values="0.5, 1.0, 1.5", lambda_sem_values="0.0, 0.5, 1.0, 1.5",
                color_fix=options.default("color_fix"), cell_size=512, latent_tile=options.default("latent_tile"),
                latent_overlap=options.default("latent_overlap"), vae_tile=options.default("vae_tile"),
                color_reference=None) -> io.NodeOutput:
        check_model(pisa_model)
        pix, pairs = grid_pairs(lambda_pix_values, lambda_sem_values)
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
        return io.NodeOutput(torch.stack(sheets), results)
