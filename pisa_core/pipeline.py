"""PiSA-SR inference, top to bottom: low-quality image in, super-resolved image out.

    x_LQ  --geometry-->  pixels in [-1, 1] at the working size (a multiple of 8)
    z_L   = s · VAE.encode(pixels)            (posterior mean; seeded sample on request)
    ε     = λ_pix·ε_pix + λ_sem·(ε_PiSA − ε_pix)   (UNet at t = 1, empty prompt; latent tiles)
    z_H   = z_L − ε
    x_SR  = clamp(VAE.decode(z_H / s), −1, 1)  → [0, 1] → colour fix → final size

Latents handed in and out of the stage methods are UNSCALED VAE latents (ComfyUI's LATENT
convention); the UNet works on scaled ones (× scaling_factor).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .adapters import DualLoRAUNet
from .base_model import BaseModel, load_base_model
from .checkpoint import PiSAWeights, load_pisa_weights
from .colorfix import apply_color_fix
from .errors import PiSAError
from .geometry import finish, prepare_exact, prepare_release
from .guidance import PISA, PIX, plan_passes, residual_latent
from .tiling import tiled_latent_map, vae_decode_tiled, vae_encode_tiled

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
COLOR_FIXES = ("adain", "wavelet", "none")
GEOMETRIES = ("exact", "release")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
VAE_TILE_PX = 512     # keeps a 4096² fp32 upscale under 6 GiB on a CPU; bigger tiles: faster on GPUs
VAE_OVERLAP_PX = 64   # feathered overlap between VAE tiles, image pixels


def _inplace_activations(model: nn.Module) -> None:
    """In-place SiLU in the VAE (inference only): one full-resolution buffer less per resnet.
    Safe there because each SiLU consumes a fresh GroupNorm output; not done in the UNet, whose
    time embedding is shared between blocks."""
    for module in model.modules():
        if isinstance(module, nn.SiLU):
            module.inplace = True


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 where the GPU has it, fp16 on other GPUs, fp32 on the CPU."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def resolve_dtype(name: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    if name in (None, "auto"):
        return default_dtype(device)
    if name not in DTYPES:
        raise PiSAError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {name!r}")
    return DTYPES[name]


class PiSAPipeline:
    """The loaded model (UNet with both LoRAs on one weight set, VAE, empty-prompt embedding)."""

    def __init__(self, base: BaseModel, weights: PiSAWeights, *, device=None, dtype=None,
                 channels_last: bool | None = None, compile: bool = False, weights_device=None):
        """device: where the stages compute. weights_device: where the weights are put at load
        (default: device); a host that moves them to `device` before each use (ComfyUI's model
        management) passes its offload device here. channels_last: NHWC convolutions, same maths
        in another summation order (default: on GPUs; off on the CPU, where it gains ~7 % but
        moves fp32 results by ~1e-4 of the release's). compile: torch.compile the UNet and the VAE
        (first image slow, later ones faster on GPUs)."""
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = resolve_dtype(dtype, self.device)
        self.scaling_factor = base.scaling_factor
        # merge in float32 before the cast, so the merged weights are rounded once
        self.unet = DualLoRAUNet(base.unet.float(), weights, weights.source or "PiSA-SR weights")
        place = torch.device(weights_device) if weights_device is not None else self.device
        self.unet.to(place, self.dtype)
        # nn.Module.to: diffusers' own .to() warns about fp32-pinned modules SD2's VAE does not have
        self.vae = nn.Module.to(base.vae, place, self.dtype)
        _inplace_activations(self.vae)
        if channels_last if channels_last is not None else self.device.type == "cuda":
            self.unet.to(memory_format=torch.channels_last)
            nn.Module.to(self.vae, memory_format=torch.channels_last)
        if compile:
            self.unet.unet = torch.compile(self.unet.unet)
            self.vae.encoder = torch.compile(self.vae.encoder)
            self.vae.decoder = torch.compile(self.vae.decoder)
        self.vae_dtype = self.dtype
        self.prompt_embeds = base.prompt_embeds.to(self.device, self.dtype)
        self.base_source, self.weights_source = base.source, weights.source

    @classmethod
    def from_files(cls, base, weights, *, device=None, dtype=None, **options) -> "PiSAPipeline":
        """Load the SD2.1-base model (diffusers folder or single file) and the PiSA-SR weights
        (official .pkl or our .safetensors); options as in __init__."""
        return cls(load_base_model(base), load_pisa_weights(weights), device=device, dtype=dtype, **options)

    # --- stages -----------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor, *, vae_tile: int = VAE_TILE_PX, sample: bool = False,
               seed: int | None = None, progress: Progress | None = None) -> torch.Tensor:
        """pixels [B,3,H,W] in [-1,1] (H, W multiples of 8) → unscaled latent [B,4,H/8,W/8], float32.
        The posterior mean by default; a seeded posterior sample with sample=True."""
        _check_pixels(pixels)

        def moments(tile: torch.Tensor) -> torch.Tensor:
            dist = self.vae.encode(tile.to(self.device, self.vae_dtype)).latent_dist
            return torch.cat([dist.mean, dist.logvar], dim=1).float()

        stats = vae_encode_tiled(moments, pixels, tile=vae_tile, overlap=VAE_OVERLAP_PX, progress=progress)
        mean, logvar = stats.chunk(2, dim=1)
        if not sample:
            return mean
        generator = torch.Generator(device="cpu").manual_seed(0 if seed is None else seed)
        noise = torch.randn(mean.shape, generator=generator).to(mean.device)
        return mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * noise

    @torch.no_grad()
    def predict_eps(self, latent: torch.Tensor, *, need: Sequence[str] = (PIX, PISA), latent_tile: int = 96,
                    latent_overlap: int = 32, tile_batch: int = 1,
                    progress: Progress | None = None) -> dict[str, torch.Tensor]:
        """ε for the requested branches ("pix", "pisa") of an unscaled latent, in the scaled
        latent space, float32. Both branches run as one batch of two (pix, pix+sem)."""
        need = tuple(dict.fromkeys(need))
        if not need:
            return {}
        if any(n not in (PIX, PISA) for n in need):
            raise PiSAError(f"unknown ε branch in {need}; expected 'pix' and/or 'pisa'")
        z_lq = latent.to(self.device, torch.float32) * self.scaling_factor
        sem_off = [n == PIX for n in need]

        def run(tiles: torch.Tensor) -> torch.Tensor:
            batch = tiles.to(self.dtype).repeat(len(need), 1, 1, 1)
            eps = self.unet(batch, self.prompt_embeds, sem_off=sem_off).float()
            return torch.cat(eps.chunk(len(need), dim=0), dim=1)  # branches side by side in channels

        stacked = tiled_latent_map(z_lq, run, tile=latent_tile, overlap=latent_overlap,
                                   max_batch=tile_batch, progress=progress)
        return dict(zip(need, stacked.chunk(len(need), dim=1)))

    @torch.no_grad()
    def guided_latent(self, latent: torch.Tensor, lambda_pix: float = 1.0, lambda_sem: float = 1.0, *,
                      eps: dict[str, torch.Tensor] | None = None, **tile_options) -> torch.Tensor:
        """z_H (unscaled) for (λ_pix, λ_sem). Branches already in `eps` are reused: no UNet pass
        is run for them."""
        plan = plan_passes(lambda_pix, lambda_sem)
        eps = dict(eps or {})
        missing = [b for b in plan.branches if b not in eps]
        if missing:
            eps.update(self.predict_eps(latent, need=missing, **tile_options))
        z_lq = latent.to(self.device, torch.float32) * self.scaling_factor
        return residual_latent(z_lq, plan.combine(eps, like=z_lq)) / self.scaling_factor

    @torch.no_grad()
    def decode(self, latent: torch.Tensor, *, vae_tile: int = VAE_TILE_PX, progress: Progress | None = None) -> torch.Tensor:
        """Unscaled latent → image [B,3,8h,8w] in [-1, 1], float32. A VAE that overflows in half
        precision (NaN/inf) is switched to float32 and the decode redone."""
        def run(tile: torch.Tensor) -> torch.Tensor:
            return self.vae.decode(tile.to(self.device, self.vae_dtype)).sample.float()

        def tiled() -> torch.Tensor:
            return vae_decode_tiled(run, latent.float(), tile=vae_tile // 8, overlap=VAE_OVERLAP_PX // 8,
                                    progress=progress)

        image = tiled()
        if self.vae_dtype != torch.float32 and not torch.isfinite(image).all():
            log.warning("PiSA-SR: the VAE overflowed in %s; decoding in float32 from now on", self.vae_dtype)
            nn.Module.float(self.vae)
            self.vae_dtype = torch.float32
            image = tiled()
        return image.clamp_(-1, 1)

    # --- the whole path ---------------------------------------------------------------------

    @torch.no_grad()
    def __call__(self, images, *, upscale: float = 4, lambda_pix: float = 1.0, lambda_sem: float = 1.0,
                 color_fix: str = "adain", latent_tile: int = 96, latent_overlap: int = 32,
                 vae_tile: int = VAE_TILE_PX, geometry: str = "exact", process_size: int = 512,
                 sample: bool = False, seed: int | None = None, tile_batch: int = 1,
                 progress: Progress | None = None) -> torch.Tensor:
        """images: float tensor [B,H,W,C] in [0,1] with C = 1 (gray), 2 (gray+alpha), 3 or 4
        (RGBA), or a list of 8-bit RGB Pillow images (the release geometry's exact input).
        Returns [B,H',W',C] float32 in [0,1] on the CPU (C as given; 3 for Pillow input)."""
        _check_options(color_fix, geometry, upscale, latent_tile, latent_overlap, vae_tile)
        rgb, alpha, gray = _split_channels(images)
        if geometry == "release":
            prepared = prepare_release(rgb, upscale, process_size)
        else:
            prepared = prepare_exact(rgb, upscale, process_size)

        latent = self.encode(prepared.pixels, vae_tile=vae_tile, sample=sample, seed=seed, progress=progress)
        z_high = self.guided_latent(latent, lambda_pix, lambda_sem, latent_tile=latent_tile,
                                    latent_overlap=latent_overlap, tile_batch=tile_batch, progress=progress)
        del latent
        out = self.decode(z_high, vae_tile=vae_tile, progress=progress).cpu()
        work_h, work_w = prepared.work_size
        out01 = out[..., :work_h, :work_w].mul_(0.5).add_(0.5).clamp_(0, 1)
        out01 = apply_color_fix(out01, prepared.reference.cpu(), color_fix)
        out01 = finish(out01, prepared)
        return _merge_channels(out01, alpha, gray, prepared.out_size)


def _check_pixels(pixels: torch.Tensor) -> None:
    if pixels.dim() != 4 or pixels.shape[1] != 3:
        raise PiSAError(f"expected pixels [B,3,H,W], got shape {tuple(pixels.shape)}")
    if pixels.shape[-1] % 8 or pixels.shape[-2] % 8:
        raise PiSAError(f"image sides must be multiples of 8 for the VAE, got {pixels.shape[-1]}x{pixels.shape[-2]}")


def _check_options(color_fix, geometry, upscale, latent_tile, latent_overlap, vae_tile) -> None:
    if color_fix not in COLOR_FIXES:
        raise PiSAError(f"color_fix must be one of {', '.join(COLOR_FIXES)}; got {color_fix!r}")
    if geometry not in GEOMETRIES:
        raise PiSAError(f"geometry must be one of {', '.join(GEOMETRIES)}; got {geometry!r}")
    if not upscale > 0:
        raise PiSAError(f"upscale must be positive, got {upscale}")
    if latent_tile < 1 or not 0 <= latent_overlap < latent_tile:
        raise PiSAError(f"latent tile {latent_tile} / overlap {latent_overlap}: need tile >= 1 and 0 <= overlap < tile")
    if vae_tile < 2 * VAE_OVERLAP_PX or vae_tile % 8:
        raise PiSAError(f"vae_tile must be a multiple of 8 and at least {2 * VAE_OVERLAP_PX} image pixels, "
                        f"got {vae_tile}")


def _split_channels(images):
    """→ (rgb, alpha, gray): rgb [B,3,H,W] in [0,1] (or the Pillow list as is), alpha [B,1,H,W] or
    None, and whether the input was grayscale."""
    if isinstance(images, (list, tuple)):
        if not images or any(im.mode != "RGB" for im in images):
            raise PiSAError("Pillow input must be a non-empty list of RGB images")
        return list(images), None, False
    if not torch.is_tensor(images) or images.dim() != 4 or images.shape[-1] not in (1, 2, 3, 4):
        shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
        raise PiSAError(f"expected images [B,H,W,C] with C in 1..4, got {shape}")
    chw = images.float().permute(0, 3, 1, 2).clamp(0, 1)
    channels = chw.shape[1]
    gray = channels in (1, 2)
    color = chw[:, :1].expand(-1, 3, -1, -1) if gray else chw[:, :3]
    alpha = chw[:, -1:] if channels in (2, 4) else None
    return color.contiguous(), alpha, gray


def _merge_channels(out01: torch.Tensor, alpha, gray: bool, out_size) -> torch.Tensor:
    """Back to [B,H,W,C] with the input's channel layout: luma for gray input, alpha upscaled
    on its own (bicubic) and re-attached."""
    if gray:
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=out01.dtype).view(1, 3, 1, 1)
        out01 = (out01 * weights).sum(dim=1, keepdim=True)
    if alpha is not None:
        alpha = torch.nn.functional.interpolate(alpha.cpu(), size=out_size, mode="bicubic",
                                                align_corners=False, antialias=True).clamp(0, 1)
        out01 = torch.cat([out01, alpha], dim=1)
    return out01.permute(0, 2, 3, 1).contiguous()
