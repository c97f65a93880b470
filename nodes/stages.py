"""The four stage nodes: PiSALoader → PiSAEncode → PiSADualGuidance → PiSADecode.

Thin wrappers: parse the inputs, call pisa_core, format the outputs. The functions below the node
classes are shared with PiSAUpscale and PiSAGuidanceGrid so every path computes the same thing.
"""

from __future__ import annotations

import logging

import torch

from ..pisa_core.colorfix import apply_color_fix
from ..pisa_core.errors import PiSAError
from ..pisa_core.geometry import pad_for_vae, working_size
from ..pisa_core.guidance import PISA, PIX, plan_passes, residual_latent
from . import host, imageops
from .model import DTYPE_CHOICES, PiSAModel, load_model, with_backoff, working_memory

LOG = logging.getLogger("PiSA-SR")
CATEGORY = "image/upscaling/PiSA-SR"
COLOR_FIXES = ("adain", "wavelet", "none")
META = "pisa"  # extra key in the LATENT dict: sizes and the LQ image, for exact output size and colour fix
STAGE_STEPS = 100  # progress steps per image and stage (tiles report fractions of it)

# ---------------------------------------------------------------- input specs (shared)

MODEL_INPUT = ("PISA_MODEL", {"tooltip": "The PiSA-SR model from a PiSA-SR Loader node."})
UPSCALE_INPUT = ("FLOAT", {"default": 4.0, "min": 1.0, "max": 16.0, "step": 0.05, "tooltip":
                           "Output size = input size × this factor (rounded). PiSA-SR was trained for 4×."})
RESAMPLING_INPUT = (list(imageops.RESAMPLING), {"default": "bicubic", "tooltip":
                    "How the low-quality image is enlarged before the model (the release uses bicubic)."})
VAE_TILE_INPUT = ("INT", {"default": 1024, "min": 128, "max": 8192, "step": 64, "tooltip":
                          "VAE tile size in image pixels; lower it if you run out of memory on large images."})
LAMBDA_PIX_INPUT = ("FLOAT", {"default": 1.0, "min": 0.0, "max": 3.0, "step": 0.05, "display": "slider", "tooltip":
                              "Pixel-level guidance λ_pix: higher removes more degradation (noise, JPEG) "
                              "and sharpens edges; too high over-smooths."})
LAMBDA_SEM_INPUT = ("FLOAT", {"default": 1.0, "min": 0.0, "max": 3.0, "step": 0.05, "display": "slider", "tooltip":
                              "Semantic-level guidance λ_sem: higher adds generated detail and texture; "
                              "too high invents content and artifacts. 0 = pixel LoRA only."})
LATENT_TILE_INPUT = ("INT", {"default": 96, "min": 16, "max": 512, "step": 8, "tooltip":
                             "UNet tile size in latent pixels (×8 image pixels); tiling starts when the "
                             "latent is larger than tile². Lower it if you run out of memory."})
LATENT_OVERLAP_INPUT = ("INT", {"default": 32, "min": 0, "max": 256, "step": 8, "tooltip":
                                "Overlap between UNet tiles in latent pixels (blended with Gaussian weights)."})
PROCESS_SIZE_INPUT = ("INT", {"default": 512, "min": 0, "max": 4096, "step": 8, "tooltip":
                            "Outputs whose short side is below this are computed at this size and resized back "
                            "(the model was trained at 512, as in the release). 0 = always work at the output size."})
COLOR_FIX_INPUT = (list(COLOR_FIXES), {"default": "adain", "tooltip":
                   "Colour correction against the upscaled low-quality image: adain (release default, "
                   "mean/std per channel), wavelet (keeps the LQ's low frequencies) or none."})
COLOR_REF_INPUT = ("IMAGE", {"tooltip": "Optional colour reference (usually the low-quality input image). "
                             "Without it, the image given to PiSA Encode is used."})


# ---------------------------------------------------------------- nodes


class PiSALoader:
    DESCRIPTION = ("Loads Stable Diffusion 2.1-base (single file from models/checkpoints or a diffusers folder "
                   "from models/diffusers) with the PiSA-SR pixel and semantic LoRAs (models/pisa_sr).")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("PISA_MODEL",)
    RETURN_NAMES = ("pisa_model",)
    OUTPUT_TOOLTIPS = ("The loaded PiSA-SR model (UNet with both LoRAs, VAE).",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "base_model": (host.base_model_choices(), {"tooltip":
                           "SD 2.1-base: v2-1_512-ema-pruned.safetensors in models/checkpoints, or a "
                           "diffusers folder in models/diffusers (shown as '[diffusers] name')."}),
            "pisa_weights": (host.pisa_weight_choices(), {"tooltip":
                             "PiSA-SR weights in models/pisa_sr: the official pisa_sr.pkl or a converted .safetensors."}),
            "dtype": (list(DTYPE_CHOICES), {"default": "auto", "tooltip":
                      "Weight precision. auto follows ComfyUI (fp16 on most GPUs, fp32 on CPU). "
                      "A VAE that overflows in fp16 is switched to fp32 automatically."}),
        }, "optional": {  # inputs added after the first release are optional: older API prompts stay valid
            "compile": ("BOOLEAN", {"default": False, "tooltip":
                        "torch.compile the UNet and VAE: the first image takes minutes to compile, "
                        "later ones of the same size run faster on GPUs."}),
        }}

    def load(self, base_model, pisa_weights, dtype="auto", compile=False):
        return (load_model(base_model, pisa_weights, dtype, compile),)


class PiSAEncode:
    DESCRIPTION = ("Enlarges the low-quality image by upscale_by and encodes it with the VAE into a standard "
                   "LATENT (unscaled, like VAE Encode). Works on batches (e.g. video frames).")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("z_L: the latent of the enlarged low-quality image.",)
    FUNCTION = "encode"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "pisa_model": MODEL_INPUT,
            "image": ("IMAGE", {"tooltip": "The low-quality image(s) to super-resolve."}),
            "upscale_by": UPSCALE_INPUT,
            "resampling": RESAMPLING_INPUT,
            "vae_tile": VAE_TILE_INPUT,
            "process_size": PROCESS_SIZE_INPUT,
        }}

    def encode(self, pisa_model, image, upscale_by=4.0, resampling="bicubic", vae_tile=1024, process_size=512):
        _check_model(pisa_model)
        rgb = imageops.to_rgb_chw(image)
        progress = host.Progress(rgb.shape[0] * STAGE_STEPS)
        return (encode_images(pisa_model, rgb, upscale_by, resampling, vae_tile, progress, process_size),)


class PiSADualGuidance:
    DESCRIPTION = ("One UNet step with dual LoRA guidance: ε = λ_pix·ε_pix + λ_sem·(ε_PiSA − ε_pix), "
                   "z_H = z_L − ε. Both ε are cached per input latent, so changing only λ runs no UNet pass.")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("latent",)
    OUTPUT_TOOLTIPS = ("z_H: the super-resolved latent (unscaled; also decodable with VAE Decode).",)
    FUNCTION = "guide"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "pisa_model": MODEL_INPUT,
            "latent": ("LATENT", {"tooltip": "z_L from PiSA Encode (or any SD2 VAE latent)."}),
            "lambda_pix": LAMBDA_PIX_INPUT,
            "lambda_sem": LAMBDA_SEM_INPUT,
            "latent_tile": LATENT_TILE_INPUT,
            "latent_overlap": LATENT_OVERLAP_INPUT,
        }}

    def guide(self, pisa_model, latent, lambda_pix=1.0, lambda_sem=1.0, latent_tile=96, latent_overlap=32):
        _check_model(pisa_model)
        z = _samples(latent)
        progress = host.Progress(z.shape[0] * STAGE_STEPS)
        eps = branch_eps(pisa_model, z, latent_tile, latent_overlap, progress)
        out = dict(latent)
        out["samples"] = guided(pisa_model, z, eps, lambda_pix, lambda_sem)
        return (out,)


class PiSADecode:
    DESCRIPTION = ("Decodes a PiSA-SR latent with the VAE, applies the colour fix and returns the image at the "
                   "exact requested size (padding cropped, small inputs brought back to their target size).")
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The super-resolved image(s).",)
    FUNCTION = "decode"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pisa_model": MODEL_INPUT,
                "latent": ("LATENT", {"tooltip": "z_H from PiSA Dual Guidance."}),
                "color_fix": COLOR_FIX_INPUT,
                "vae_tile": VAE_TILE_INPUT,
            },
            "optional": {"color_reference": COLOR_REF_INPUT},
        }

    def decode(self, pisa_model, latent, color_fix="adain", vae_tile=1024, color_reference=None):
        _check_model(pisa_model)
        z = _samples(latent)
        progress = host.Progress(z.shape[0] * STAGE_STEPS)
        out = decode_latent(pisa_model, latent, z, color_fix, vae_tile, color_reference, progress)
        return (imageops.to_image(out),)


# ---------------------------------------------------------------- shared stage functions


def _check_model(model) -> None:
    if not isinstance(model, PiSAModel):
        raise PiSAError(f"The pisa_model input must come from a PiSA-SR Loader node, got {type(model).__name__}.")


def _samples(latent) -> torch.Tensor:
    if not isinstance(latent, dict) or not torch.is_tensor(latent.get("samples")):
        raise PiSAError("The latent input must be a LATENT (a dict with 'samples'), e.g. from PiSA Encode.")
    z = latent["samples"]
    if z.dim() != 4 or z.shape[1] != 4:
        raise PiSAError(f"The latent must be an SD-style 4-channel latent [B,4,h,w], got {tuple(z.shape)}.")
    return z


def encode_images(model: PiSAModel, rgb: torch.Tensor, upscale_by: float, resampling: str, vae_tile: int,
                  progress: host.Progress, process_size: int = imageops.PROCESS_SIZE) -> dict:
    """rgb [B,3,h,w] in [0,1] → LATENT with the unscaled z_L and the sizes for an exact decode."""
    out_size = imageops.output_size(rgb.shape[-2], rgb.shape[-1], upscale_by)
    work = working_size(*out_size, process_size)
    model.ready(working_memory("encode", vae_tile, work, model.pipe.dtype))
    latents = []
    for one in rgb.split(1):  # one image at a time: bounded memory for long batches
        # multiple of 8 only: the LATENT keeps ceil(work / 8), which Decode checks against its metadata
        pixels = pad_for_vae(imageops.resize(one, work, resampling) * 2 - 1, min_side=0)
        stage = progress.stage(STAGE_STEPS)
        latents.append(with_backoff(
            lambda t, px=pixels, st=stage: model.pipe.encode(px, vae_tile=t, progress=st),
            vae_tile, minimum=128, what="VAE encoder").cpu())
    meta = {"out_size": out_size, "work_size": work, "lq": rgb, "resampling": resampling}
    return {"samples": torch.cat(latents), META: meta}


def branch_eps(model: PiSAModel, z: torch.Tensor, tile: int, overlap: int, progress: host.Progress,
               branches=(PIX, PISA)) -> list[dict]:
    """The requested ε branches per batch image; the model's cache answers those already computed
    for the same latent (then no UNet pass runs)."""
    if not 0 <= overlap < tile:
        raise PiSAError(f"latent_overlap ({overlap}) must be smaller than latent_tile ({tile}).")
    results = []
    for one in z.split(1):
        eps = model.eps_cache.get(one, tile, overlap)
        need = [b for b in branches if b not in eps]
        if need:
            model.ready(working_memory("unet", tile, one.shape[-2:], model.pipe.dtype, batch=len(need)))
            stage = progress.stage(STAGE_STEPS)

            def run(t, one=one, need=need, stage=stage):
                lap = overlap if t == tile else min(overlap, t // 2)
                return model.pipe.predict_eps(one, need=need, latent_tile=t, latent_overlap=lap, progress=stage)

            eps.update(with_backoff(run, tile, minimum=16, what="UNet"))
            model.eps_cache.put(one, tile, overlap, eps)
        else:
            progress.advance(STAGE_STEPS)
        results.append(eps)
    return results


def guided(model: PiSAModel, z: torch.Tensor, eps: list[dict], lambda_pix: float, lambda_sem: float) -> torch.Tensor:
    """z_H = (s·z_L − ε)/s per image with ε = λ_pix·ε_pix + λ_sem·(ε_PiSA − ε_pix) (no UNet pass)."""
    scale = model.pipe.scaling_factor
    plan = plan_passes(lambda_pix, lambda_sem)
    out = []
    for one, e in zip(z.split(1), eps):
        z_low = one.float().cpu() * scale
        mix = plan.combine({k: v.cpu() for k, v in e.items()}, like=z_low)
        out.append(residual_latent(z_low, mix) / scale)
    return torch.cat(out)


def _meta_for(latent: dict, z: torch.Tensor):
    meta = latent.get(META)
    if not isinstance(meta, dict):
        return None
    work_h, work_w = meta["work_size"]
    padded = (-(-work_h // 8), -(-work_w // 8))
    if tuple(z.shape[-2:]) != padded or meta["lq"].shape[0] != z.shape[0]:
        LOG.warning("PiSA-SR: the latent was changed after PiSA Encode; decoding it at its own size")
        return None
    return meta


def decode_latent(model: PiSAModel, latent: dict, z: torch.Tensor, color_fix: str, vae_tile: int,
                  color_reference, progress: host.Progress) -> torch.Tensor:
    """LATENT → [B,3,H,W] in [0,1] at the exact output size, colour-fixed."""
    if color_fix not in COLOR_FIXES:
        raise PiSAError(f"color_fix must be one of {', '.join(COLOR_FIXES)}, got {color_fix!r}.")
    meta = _meta_for(latent, z)
    work = tuple(meta["work_size"]) if meta else (z.shape[-2] * 8, z.shape[-1] * 8)
    reference = _color_reference(meta, color_reference, z.shape[0], work)
    if reference is None and color_fix != "none":
        LOG.warning("PiSA-SR: no colour reference for this latent; colour fix skipped")
        color_fix = "none"
    model.ready(working_memory("decode", vae_tile // 8, z.shape[-2:], model.pipe.dtype))
    images = []
    for i, one in enumerate(z.split(1)):
        stage = progress.stage(STAGE_STEPS)
        pixels = with_backoff(lambda t, one=one, st=stage: model.pipe.decode(one, vae_tile=t, progress=st),
                              vae_tile, minimum=128, what="VAE decoder").float().cpu()
        img = (pixels[..., :work[0], :work[1]] * 0.5 + 0.5).clamp(0, 1)
        ref = reference[i:i + 1] if reference is not None else None
        img = apply_color_fix(img, ref, color_fix)
        if meta and tuple(meta["out_size"]) != work:
            img = imageops.resize(img, tuple(meta["out_size"]), "bicubic")
        images.append(img)
    return torch.cat(images)


def _color_reference(meta, color_reference, batch: int, work: tuple[int, int]):
    """The upscaled LQ at the working size: from the optional input, else from PiSA Encode."""
    if color_reference is not None:
        ref = imageops.match_batch(imageops.to_rgb_chw(color_reference, "color_reference"), batch, "color_reference")
        return imageops.resize(ref, work, "bicubic")
    if meta is not None:
        return imageops.resize(meta["lq"], work, meta.get("resampling", "bicubic"))
    return None
