"""The four stage nodes: PiSALoader → PiSAEncode → PiSADualGuidance → PiSADecode.

Thin wrappers around PiSAPipeline's public stages (prepare, encode, predict_eps, guide, decode,
finish). What stays here is ComfyUI's business: IMAGE/LATENT conversion, one image of a batch at a
time, progress and Cancel, model management (memory asked for before each stage), the tile
back-off on out-of-memory, and the ε cache. The functions below the node classes are shared with
PiSAUpscale and PiSAGuidanceGrid, so every node path computes the same thing.
"""

from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

from ..pisa_core import options
from ..pisa_core.model import fast_decoder
from ..pisa_core.errors import PiSAError
from ..pisa_core.inference.geometry import Plan, check_images
from ..pisa_core.inference.guidance import PISA, PIX, masked_lambda
from ..pisa_core.inference.memory import MIN_VAE_TILE, working_memory
from ..pisa_core.inference.pipeline import check_options, to_host
from ..pisa_core.inference.progress import STAGE_STEPS
from ..pisa_core.options import LATENT_FACTOR
from . import host
from .model import PiSAModel, decoder_choices, files_fingerprint, load_model, pisa_weight_choices, with_backoff
from .schema import (
    PisaModel,
    color_reference_input,
    image_input,
    model_input,
    node_schema,
    option_input,
    region_inputs,
    widget,
)

LOG = logging.getLogger("PiSA-SR")
DECODER_TOOLTIP = (
    f"'{fast_decoder.BASE_DECODER}': the base model's own VAE decoder. Or a fast decoder file in models/pisa_sr "
    "(recognised by content): sd21_lwdecoder.pth from VOSR (arXiv 2604.03225, Apache-2.0), a half-width SD2.1 VAE "
    "decoder doing a quarter of the decode work, or its .safetensors; its authors report comparable quality on "
    "SD2.1 latents, not measured on PiSA-SR outputs here. Decode, Upscale and Guidance Grid use it.")
META = "pisa"  # extra key in the LATENT dict: the pipeline's Plan (sizes, input, geometry) for Decode
MIN_LATENT_TILE = 16


# ---------------------------------------------------------------- nodes


class PiSALoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return node_schema(
            node_id="PiSALoader", display_name="PiSA-SR Loader",
            description=("Loads Stable Diffusion 2.1-base (single file from models/checkpoints or a diffusers "
                         "folder from models/diffusers) with the PiSA-SR pixel and semantic LoRAs (models/pisa_sr, "
                         "or PiSA-SR weights found in models/loras), and optionally a fast decoder in place of the "
                         "VAE decoder for every decode."),
            inputs=[
                io.Combo.Input("base_model", options=host.base_model_choices(), tooltip=(
                    "SD 2.1-base: v2-1_512-ema-pruned.safetensors in models/checkpoints, or a diffusers folder in "
                    "models/diffusers (shown as '[diffusers] name').")),
                io.Combo.Input("pisa_weights", options=pisa_weight_choices(), tooltip=(
                    "PiSA-SR weights in models/pisa_sr (the official pisa_sr.pkl or a converted .safetensors), or "
                    "found in models/loras (shown as '[loras] name').")),
                option_input("dtype", advanced=True, tooltip=options.OPTIONS["dtype"].help + (
                    " A part that overflows in half precision is switched to fp32 (logged).")),
                # inputs added after the first release are optional: older API prompts stay valid
                widget(io.Boolean, "compile", optional=True, advanced=True, default=False, tooltip=(
                    "torch.compile the UNet and VAE (dynamic shapes): the first image takes minutes to compile, "
                    "later ones run faster on GPUs.")),
                io.Combo.Input("decoder", options=decoder_choices(), default=fast_decoder.BASE_DECODER,
                               optional=True, tooltip=DECODER_TOOLTIP),
            ],
            outputs=[PisaModel.Output(display_name="pisa_model",
                                      tooltip="The loaded PiSA-SR model (UNet with both LoRAs, VAE).")])

    @classmethod
    def fingerprint_inputs(cls, base_model, pisa_weights, dtype="auto", compile=False,
                           decoder=fast_decoder.BASE_DECODER):
        """A replaced model file (new size or time) loads again; the same files reuse the loaded model."""
        return files_fingerprint(base_model, pisa_weights, decoder), dtype, compile

    @classmethod
    def execute(cls, base_model, pisa_weights, dtype="auto", compile=False,
                decoder=fast_decoder.BASE_DECODER) -> io.NodeOutput:
        return io.NodeOutput(load_model(base_model, pisa_weights, dtype, compile, decoder))


class PiSAEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return node_schema(
            node_id="PiSAEncode", display_name="PiSA-SR Encode",
            description=("Enlarges the low-quality image by upscale_by and encodes it with the VAE into a standard "
                         "LATENT (unscaled, like VAE Encode). Works on batches (e.g. video frames)."),
            inputs=[model_input(), image_input(), option_input("upscale"), option_input("resampling", advanced=True),
                    option_input("vae_tile", advanced=True), option_input("process_size", advanced=True)],
            outputs=[io.Latent.Output(display_name="latent",
                                      tooltip="z_L: the latent of the enlarged low-quality image.")])

    @classmethod
    def validate_inputs(cls, vae_tile=None):
        return settings_error(vae_tile=vae_tile)

    @classmethod
    def execute(cls, pisa_model, image, upscale_by=options.default("upscale"),
                resampling=options.default("resampling"), vae_tile=options.default("vae_tile"),
                process_size=options.default("process_size")) -> io.NodeOutput:
        check_model(pisa_model)
        images = check_images(image, "the image input")
        progress = host.HOST.progress(images.shape[0] * STAGE_STEPS)
        return io.NodeOutput(encode_images(pisa_model, images, upscale_by, resampling, vae_tile, process_size,
                                           progress))


class PiSADualGuidance(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return node_schema(
            node_id="PiSADualGuidance", display_name="PiSA-SR Dual Guidance",
            description=("One UNet step with dual LoRA guidance: ε = λ_pix·ε_pix + λ_sem·(ε_PiSA − ε_pix), "
                         "z_H = z_L − ε. Both ε are cached per input latent, so changing only λ runs no UNet pass."),
            inputs=[model_input(),
                    io.Latent.Input("latent", tooltip="z_L from PiSA Encode (or any SD2 VAE latent)."),
                    option_input("lambda_pix"), option_input("lambda_sem"),
                    option_input("latent_tile", advanced=True), option_input("latent_overlap", advanced=True),
                    *region_inputs()],
            outputs=[io.Latent.Output(display_name="latent", tooltip=(
                "z_H: the super-resolved latent (unscaled; also decodable with VAE Decode)."))])

    @classmethod
    def validate_inputs(cls, latent_tile=None, latent_overlap=None):
        return settings_error(latent_tile=latent_tile, latent_overlap=latent_overlap)

    @classmethod
    def execute(cls, pisa_model, latent, lambda_pix=options.default("lambda_pix"),
                lambda_sem=options.default("lambda_sem"), latent_tile=options.default("latent_tile"),
                latent_overlap=options.default("latent_overlap"), mask=None,
                lambda_pix_masked=options.default("lambda_pix_masked"),
                lambda_sem_masked=options.default("lambda_sem_masked")) -> io.NodeOutput:
        check_model(pisa_model)
        z = samples(latent)
        lambdas = region_lambdas(lambda_pix, lambda_sem, mask, lambda_pix_masked, lambda_sem_masked, z.shape[0])
        check_options(latent_tile=latent_tile, latent_overlap=latent_overlap)
        progress = host.HOST.progress(z.shape[0] * STAGE_STEPS)
        eps = branch_eps(pisa_model, z, latent_tile, latent_overlap, progress)
        return io.NodeOutput(dict(latent, samples=guided(pisa_model, z, eps, *lambdas, plan=plan_of(latent, z))))


class PiSADecode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return node_schema(
            node_id="PiSADecode", display_name="PiSA-SR Decode",
            description=("Decodes a PiSA-SR latent with the VAE, applies the colour fix and returns the image at "
                         "the exact requested size (padding cropped, small inputs brought back to their target "
                         "size)."),
            inputs=[model_input(), io.Latent.Input("latent", tooltip="z_H from PiSA Dual Guidance."),
                    option_input("color_fix"), option_input("vae_tile", advanced=True), color_reference_input()],
            outputs=[io.Image.Output(display_name="image", tooltip="The super-resolved image(s).")])

    @classmethod
    def validate_inputs(cls, vae_tile=None):
        return settings_error(vae_tile=vae_tile)

    @classmethod
    def execute(cls, pisa_model, latent, color_fix=options.default("color_fix"),
                vae_tile=options.default("vae_tile"), color_reference=None) -> io.NodeOutput:
        check_model(pisa_model)
        z = samples(latent)
        progress = host.HOST.progress(z.shape[0] * STAGE_STEPS)
        return io.NodeOutput(decode_latent(pisa_model, latent, color_fix, vae_tile, color_reference, progress))


# ---------------------------------------------------------------- shared stage functions


def check_model(model) -> None:
    if not isinstance(model, PiSAModel):
        raise PiSAError(f"The pisa_model input must come from a PiSA-SR Loader node, got {type(model).__name__}.")


def settings_error(**settings) -> bool | str:
    """validate_inputs' answer (checked when the prompt is queued, before any node runs): True, or the
    check's one-sentence error. A setting fed by a link is unknown then (None) and checked at run time."""
    if any(value is None for value in settings.values()):
        return True
    try:
        for name, value in settings.items():
            check_range(name, value)
        check_options(**settings)
    except PiSAError as error:
        return str(error)
    return True


def check_range(name: str, value) -> None:
    """The widget's range (ComfyUI checks it only for inputs that validate_inputs does not take)."""
    option = options.OPTIONS[name]
    if (option.min is not None and value < option.min) or (option.max is not None and value > option.max):
        raise PiSAError(f"{option.node_name or name} must be between {option.min:g} and {option.max:g}; got {value}.")


def samples(latent) -> torch.Tensor:
    if not isinstance(latent, dict) or not torch.is_tensor(latent.get("samples")):
        raise PiSAError("The latent input must be a LATENT (a dict with 'samples'), e.g. from PiSA Encode.")
    z = latent["samples"]
    if z.dim() != 4 or z.shape[1] != 4:
        raise PiSAError(f"The latent must be an SD-style 4-channel latent [B,4,h,w], got {tuple(z.shape)}.")
    return z


def encode_images(model: PiSAModel, images: torch.Tensor, upscale_by: float, resampling: str, vae_tile: int,
                  process_size: int, progress) -> dict:
    """IMAGE [B,H,W,C] → LATENT {"samples": unscaled z_L on the CPU, META: the Plan for Decode}.
    One image at a time: bounded memory for long batches (video frames)."""
    pipe = model.pipe
    check_options(vae_tile=vae_tile)
    pixels, plan = pipe.prepare(images, upscale=upscale_by, geometry="exact", process_size=process_size,
                                resampling=resampling)
    model.ready(working_memory("encode", None, pixels.shape[-2:], pipe.vae_dtype))
    tile = pipe.vae_tile_for("encode", pixels.shape[-2:], vae_tile)
    latents = []
    for one in pixels.split(1):
        stage = progress.stage()
        latents.append(to_host(with_backoff(lambda t, px=one, st=stage: pipe.encode(px, vae_tile=t, progress=st),
                                            tile, minimum=MIN_VAE_TILE, what="VAE encoder")))
    return {"samples": torch.cat(latents), META: plan}


def branch_eps(model: PiSAModel, z: torch.Tensor, tile: int, overlap: int, progress,
               branches=(PIX, PISA)) -> list[dict]:
    """The requested ε branches per batch image (CPU); the model's cache answers those already
    computed for the same latent and tiles (then no UNet pass runs)."""
    pipe = model.pipe
    results = []
    for one in z.split(1):
        eps = model.eps_cache.get(one, tile, overlap)
        need = [b for b in branches if b not in eps]
        if need:
            model.ready(working_memory("unet", tile, one.shape[-2:], pipe.unet_dtype, batch=len(need)))
            stage = progress.stage()

            def run(t, one=one, need=need, stage=stage):
                lap = overlap if t == tile else min(overlap, t // 2)
                found = pipe.predict_eps(one, need=need, latent_tile=t, latent_overlap=lap, progress=stage)
                return {k: to_host(v) for k, v in found.items()}

            eps.update(with_backoff(run, tile, minimum=MIN_LATENT_TILE, what="UNet"))
            model.eps_cache.put(one, tile, overlap, eps)
        else:
            progress.advance()
        results.append(eps)
    return results


def region_lambdas(lambda_pix, lambda_sem, mask, lambda_pix_masked, lambda_sem_masked, batch: int):
    """(λ_pix, λ_sem): the node's numbers, or maps from a MASK ([H,W] or [B,H,W], 1 = inside)."""
    check_options(lambda_pix=lambda_pix, lambda_sem=lambda_sem)
    if mask is None:
        return lambda_pix, lambda_sem
    check_options(lambda_pix=lambda_pix_masked, lambda_sem=lambda_sem_masked)
    if not torch.is_tensor(mask) or mask.dim() not in (2, 3) or (mask.dim() == 3 and mask.shape[0] not in (1, batch)):
        shape = tuple(mask.shape) if torch.is_tensor(mask) else type(mask).__name__
        raise PiSAError(f"The mask input must be a MASK [H,W] or [B,H,W] with B = 1 or {batch}, got {shape}.")
    mask = mask.detach().float().cpu()
    return (masked_lambda(lambda_pix, lambda_pix_masked, mask), masked_lambda(lambda_sem, lambda_sem_masked, mask))


def _for_image(value, index: int):
    """One image's λ: a number, or its slice of a batch of maps."""
    if torch.is_tensor(value) and value.dim() == 3 and value.shape[0] > 1:
        return value[index:index + 1]
    return value


def guided(model: PiSAModel, z: torch.Tensor, eps: list[dict], lambda_pix, lambda_sem, plan: Plan | None = None):
    """z_H per image from cached ε (pipeline.guide: no UNet pass), on the CPU. λ maps are over the
    low-quality input of `plan`."""
    return torch.cat([to_host(model.pipe.guide(one, e, _for_image(lambda_pix, i), _for_image(lambda_sem, i),
                                               plan=None if plan is None else plan.select(i)))
                      for i, (one, e) in enumerate(zip(z.split(1), eps))])


def plan_of(latent: dict, z: torch.Tensor) -> Plan:
    """The Plan PiSA Encode stored in the LATENT, or one that decodes at the latent's own size when
    the latent came from elsewhere or was changed (resized, sliced) after PiSA Encode."""
    plan = latent.get(META)
    if isinstance(plan, Plan) and tuple(plan.latent_size) == tuple(z.shape[-2:]) and plan.batch == z.shape[0]:
        return plan
    if isinstance(plan, Plan):
        LOG.warning("pisa-sr: the latent was changed after PiSA Encode; decoding it at its own size")
    return Plan.for_latent(z)


def decode_latent(model: PiSAModel, latent: dict, color_fix: str, vae_tile: int, color_reference, progress,
                  z: torch.Tensor | None = None) -> torch.Tensor:
    """LATENT (or `z` with the LATENT's Plan) → IMAGE [B,H,W,C] at the exact output size, colour-fixed
    against color_reference (IMAGE, 1 or B images) or else the image given to PiSA Encode."""
    pipe = model.pipe
    z = samples(latent) if z is None else z
    check_options(color_fix=color_fix, vae_tile=vae_tile)
    plan = plan_of(latent, z)
    reference = None
    if color_reference is not None:
        reference = match_batch(check_images(color_reference, "the color_reference input"), z.shape[0])
        reference = reference[..., :3].permute(0, 3, 1, 2)
    elif plan.lq is None and color_fix != "none":
        LOG.warning("pisa-sr: no colour reference for this latent; colour fix skipped")
        color_fix = "none"
    size = (z.shape[-2] * LATENT_FACTOR, z.shape[-1] * LATENT_FACTOR)
    model.ready(working_memory("decode", None, size, pipe.vae_dtype))
    tile = pipe.vae_tile_for("decode", size, vae_tile)
    images = []
    for i, one in enumerate(z.split(1)):
        stage = progress.stage()
        decoded = with_backoff(lambda t, one=one, st=stage: pipe.decode(one, vae_tile=t, progress=st),
                               tile, minimum=MIN_VAE_TILE, what="VAE decoder")
        ref = None if reference is None else reference[i:i + 1]
        images.append(pipe.finish(decoded, plan.select(i), color_fix=color_fix, reference=ref))
    return torch.cat(images)


def match_batch(images: torch.Tensor, batch: int) -> torch.Tensor:
    if images.shape[0] == batch:
        return images
    if images.shape[0] == 1:
        return images.expand(batch, -1, -1, -1)
    raise PiSAError(f"The color_reference has {images.shape[0]} images but the latent has {batch}; give 1 or {batch}.")
