"""PiSA-SR inference, top to bottom: low-quality image in, super-resolved image out.

    prepare       x_LQ --geometry--> pixels in [-1, 1] at the working size (a multiple of 8)
    encode        z_L = VAE.encode(pixels)                    (posterior mean; seeded sample on request)
    predict_eps   ε_pix, ε_PiSA = UNet(s·z_L, t = 1, "")       (latent tiles; only the branches needed)
    guide         ε = λ_pix·ε_pix + λ_sem·(ε_PiSA − ε_pix),  z_H = z_L − ε / s
    decode        x_SR = clamp(VAE.decode(z_H), −1, 1)      (or the fast decoder the model carries)
    finish        → [0, 1], colour fix against the enlarged LQ, final size, input's channel layout

(arXiv 2412.03017, Sec. 3 and Fig. 3(b); docs/release.md, "Inference"). Every front end (the CLI,
the ComfyUI nodes, the benchmarks) runs these public stages; `__call__` is them in order.

Latents handed in and out of the stages are UNSCALED VAE latents (ComfyUI's LATENT convention);
the UNet works on scaled ones (× scaling_factor). Results of encode, predict_eps, guide and
decode stay on the compute device; finish returns CPU tensors. With the model on PyTorch's `meta`
device every stage runs shape-only (a dry run): nothing is computed and finish returns zeros.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from diffusers import Transformer2DModel
from torch import nn

from .. import options
from ..errors import PiSAError
from ..model import fast_decoder
from ..model.adapters import DualLoRAUNet, LoRAMerge
from ..model.base import BaseModel, load_base_model
from ..model.checkpoint import PiSAWeights, load_pisa_weights
from ..model.resnet_inplace import use_inplace_resnets
from ..options import LATENT_FACTOR, default
from . import hardware, memory, vae_attention, vae_tiling
from .colorfix import apply_color_fix
from .geometry import Plan, map_to_latent, merge_channels, prepare, resize, to_output_size, to_unit_range
from .guidance import PISA, PIX, Lambda, check_lambda, describe_lambda, plan_passes, residual_latent
from .progress import STAGE_STEPS, Progress
from .tiling import tiled_latent_map

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]


def _inplace_activations(model: nn.Module) -> None:
    """In-place SiLU modules in the VAE: the encoder's and decoder's conv_act after their last
    GroupNorm (the decoder's at full resolution) save a buffer each; the resnets do theirs in
    resnet_inplace. Safe because each SiLU consumes a fresh GroupNorm output; not done in the
    UNet, whose time embedding is shared between blocks."""
    for module in model.modules():
        if isinstance(module, nn.SiLU):
            module.inplace = True


def _channels_last(model: nn.Module) -> None:
    """NHWC weights, and NHWC outputs from diffusers' Transformer2D blocks, which return NCHW
    (their `.contiguous()` after the token-to-image permute); else every convolution after one
    converts its input again (about 10 % of a bf16 UNet pass on a CPU, measured)."""
    model.to(memory_format=torch.channels_last)
    for module in model.modules():
        if isinstance(module, Transformer2DModel):
            module.register_forward_hook(_output_channels_last)


def _output_channels_last(module, args, output):
    if isinstance(output, tuple):
        return (output[0].contiguous(memory_format=torch.channels_last), *output[1:])
    output.sample = output.sample.contiguous(memory_format=torch.channels_last)
    return output


def to_host(tensor: torch.Tensor) -> torch.Tensor:
    """A CPU copy; zeros of the right shape for a meta tensor (a dry run has no values)."""
    if tensor.is_meta:
        return torch.zeros(tensor.shape, dtype=tensor.dtype)
    return tensor.cpu()


def _all_finite(tensor: torch.Tensor) -> bool:
    return tensor.is_meta or bool(torch.isfinite(tensor).all())


def _non_finite_message(stage: str, part: str, first: torch.dtype, latent: torch.Tensor | None) -> str:
    """What to say when a stage gives NaN/inf in float32 too: the stage, its precision and what
    fed it (only the decoder's input depends on λ: large λ_pix/λ_sem make large latents)."""
    text = f"The {stage} produced NaN or infinite values even in float32"
    if first != torch.float32:
        text += f" (it ran in {options.dtype_name(first)} first)"
    if latent is None or latent.is_meta:
        weights = "UNet or PiSA-SR" if part == "unet" else "VAE"
        return f"{text} from a finite input: the {weights} weights hold NaN or huge values."
    largest = latent.detach().abs().max().item()
    return (f"{text} from a latent as large as {largest:.3g}: lambda_pix and lambda_sem far from the paper's "
            f"0 to 1.5 (|λ| ≤ {options.LAMBDA_LIMIT:g} is allowed) make such latents, or the VAE weights hold "
            "NaN or huge values.")


class PiSAPipeline:
    """The loaded model (UNet with both LoRAs on one weight set, VAE, empty-prompt embedding).
    `decoder`: the fast decoder (fast_decoder.DecoderFile) that is the VAE's decoder, or None."""

    def __init__(self, base: BaseModel, weights: PiSAWeights, *, device=None, dtype=None,
                 channels_last: bool | None = None, compile=False, weights_device=None,
                 lora_merged: bool = False, free_memory: Callable[[], int | None] | None = None,
                 on_upcast: Callable[[str], None] | None = None, probe: hardware.Probe | None = None,
                 decoder=None):
        """device: where the stages compute (default: CUDA, else MPS, else CPU). dtype: 'auto'
        (hardware.auto_dtype), 'fp32', 'fp16', 'bf16'. weights_device: where the weights are put
        at load (default: device); a host that moves them to `device` before each use (ComfyUI's
        model management) passes its offload device here. channels_last: NHWC convolutions
        (default options.auto_channels_last). compile: torch.compile the UNet and the VAE with
        dynamic shapes (True, or a backend name or callable). lora_merged: the base UNet already
        holds W_PiSA (from_files merges while loading). free_memory(): bytes free for the VAE's
        automatic tile and its attention's query chunks (default: what the device reports).
        on_upcast(part): told when the "unet" or the "vae" is switched to float32 after a
        half-precision overflow. probe: the device's capabilities (default: asked of torch).
        decoder: None (the base VAE's decoder), a fast decoder file's path or a loaded
        fast_decoder.DecoderFile; it replaces the VAE's decoder, so every decode (tiles, dtype
        rules, progress) runs it."""
        self.decoder = fast_decoder.resolve(decoder)
        if self.decoder is not None:
            fast_decoder.attach(base.vae, self.decoder)
        self.device = hardware.parse_device(device)
        self.probe = probe or hardware.Probe()
        self.dtype = hardware.resolve_dtype(dtype, self.device, self.probe)
        self.channels_last = (options.auto_channels_last(self.device, self.dtype)
                              if channels_last is None else bool(channels_last))
        self.scaling_factor = base.scaling_factor
        self.free_memory = free_memory or (lambda: hardware.free_memory(self.device))
        self.on_upcast = on_upcast
        place = torch.device(weights_device) if weights_device is not None else self.device
        if not lora_merged:
            base.unet.float()  # merge in float32 before the cast, so the merged weights are rounded once
        self.unet = DualLoRAUNet(base.unet, weights, weights.source or "PiSA-SR weights", merged=lora_merged)
        self.unet.to(place, self.dtype)
        # nn.Module.to: diffusers' own .to() warns about fp32-pinned modules SD2's VAE does not have
        self.vae = nn.Module.to(base.vae, place, self.dtype)
        _inplace_activations(self.vae)
        use_inplace_resnets(self.unet)
        use_inplace_resnets(self.vae)
        if self.channels_last:
            _channels_last(self.unet)
            nn.Module.to(self.vae, memory_format=torch.channels_last)
        self.unet_dtype = self.vae_dtype = self.dtype
        self.upcasts: list[str] = []  # parts switched to float32 after an overflow, in order
        self.compiled = bool(compile)
        if compile:
            self._compile(compile)
        self.prompt_embeds = base.prompt_embeds.to(self.device, self.dtype)
        self.base_source, self.weights_source = base.source, weights.source
        log.info("pisa-sr: %s%s on %s", options.dtype_name(self.dtype),
                 " with channels-last" if self.channels_last else "", self.device)

    @classmethod
    def from_files(cls, base, weights, *, device=None, dtype=None, weights_device=None, decoder=None,
                   **options_) -> PiSAPipeline:
        """Load the SD2.1-base model (diffusers folder or single file) and the PiSA-SR weights
        (official .pkl or our .safetensors): the LoRAs are merged into each UNet weight as it is
        read, in float32, and the model is cast once to its dtype on its device. decoder: a fast
        decoder file (fast_decoder), read and checked before the base model; None: the base VAE's
        decoder. Options as in __init__."""
        device = hardware.parse_device(device)
        dtype = hardware.resolve_dtype(dtype, device, options_.get("probe"))
        decoder = fast_decoder.resolve(decoder)
        lora = load_pisa_weights(weights)
        merge = LoRAMerge(lora, lora.source or str(weights))
        place = weights_device if weights_device is not None else device
        model = load_base_model(base, device=place, dtype=dtype, unet_transform=merge)
        merge.check_complete()
        return cls(model, lora, device=device, dtype=dtype, weights_device=weights_device, lora_merged=True,
                   decoder=decoder, **options_)

    def _compile(self, how) -> None:
        """torch.compile with dynamic shapes, so mixed image sizes and batches stay in a few graphs.
        nn.Module.compile compiles in place (torch >= 2.2)."""
        if not hasattr(nn.Module, "compile"):
            raise PiSAError(f"compile needs torch >= 2.2 (this is {torch.__version__}).")
        kwargs = {"dynamic": True}
        if isinstance(how, str) or callable(how):
            kwargs["backend"] = how
        self.unet.compile_unet(**kwargs)
        self.vae.encoder.compile(**kwargs)
        self.vae.decoder.compile(**kwargs)

    # --- precision --------------------------------------------------------------------------

    def _upcast(self, part: str, stage: str) -> None:
        """Switch one part to float32 for good: an explicit, logged decision (see `upcasts`); the
        host is told through on_upcast (its memory bookkeeping changes)."""
        module = self.unet if part == "unet" else self.vae
        was = self.unet_dtype if part == "unet" else self.vae_dtype
        nn.Module.float(module)
        if part == "unet":
            self.unet_dtype = torch.float32
        else:
            self.vae_dtype = torch.float32
        self.upcasts.append(part)
        log.warning("pisa-sr: the %s overflowed in %s during the %s; it runs in float32 from now on",
                    part.upper(), options.dtype_name(was), stage)
        if self.on_upcast is not None:
            self.on_upcast(part)

    def _finite(self, part: str, stage: str, run: Callable[[], torch.Tensor],
                latent: torch.Tensor | None = None) -> torch.Tensor:
        """run(), checked for NaN/inf; in half precision an overflow switches `part` to float32 and
        runs the stage again; still non-finite: a clear error naming the stage, its precision and,
        for the decoder, how large its input `latent` is, instead of an image."""
        out = run()
        if _all_finite(out):
            return out
        first = self.unet_dtype if part == "unet" else self.vae_dtype
        if first != torch.float32:
            self._upcast(part, stage)
            out = run()
            if _all_finite(out):
                return out
        raise PiSAError(_non_finite_message(stage, part, first, latent))

    # --- stages -----------------------------------------------------------------------------

    def prepare(self, images, *, upscale: float = default("upscale"), geometry: str = default("geometry"),
                process_size: int = default("process_size"),
                resampling: str = default("resampling")) -> tuple[torch.Tensor, Plan]:
        """Low-quality images [B,H,W,C] in [0,1] (C 1..4; uint8 read as 0..255; or a list of
        8-bit RGB Pillow images for geometry 'release') -> (pixels [B,3,Hp,Wp] in [-1,1] on the
        CPU, Plan for `finish`)."""
        return prepare(images, upscale=upscale, geometry=geometry, process_size=process_size, resampling=resampling)

    def vae_tile_for(self, stage: str, size_hw, vae_tile: int = default("vae_tile")) -> int:
        """The VAE tile (image pixels) a stage runs with on an image of `size_hw`: vae_tile itself,
        or for 0 (auto) memory.auto_vae_tile's choice for this device (the whole image when that
        is None). A tile as large as the image runs the VAE untiled."""
        if memory.check_vae_tile(vae_tile):
            return vae_tile
        auto = memory.auto_vae_tile(stage, size_hw, self.vae_dtype, self.free_memory(), self.device.type)
        whole = max(memory.MIN_VAE_TILE, *(int(s) for s in size_hw))
        return whole + (-whole) % LATENT_FACTOR if auto is None else auto

    @property
    def _memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        """The model's memory format, contiguous (tile slices are not): one input layout, so a
        compiled model is never recompiled for strides."""
        return x.contiguous(memory_format=self._memory_format)

    def _vae(self, part: str, x: torch.Tensor, tile: int, full, progress: ProgressFn | None) -> torch.Tensor:
        """The VAE's encoder (+ quant_conv) or decoder (+ post_quant_conv) on x, float32 on the device:
        the plain forward when one tile covers the image (progress after every resnet, resampler
        and attention chunk, so a Cancel answers between them), else vae_tiling's exact tiles
        (progress per tile). The mid-block attention's query chunks fit the free memory at the start."""
        free = self.free_memory()
        if tile < max(int(s) for s in full):
            return vae_tiling.run_tiled(self.vae, part, x, tile=tile, full=tuple(full), device=self.device,
                                        layout=self._memory_format, progress=progress, free_bytes=free,
                                        probe=self.probe)
        blocks = [] if self.compiled else vae_tiling.vae_blocks(self.vae, part)
        attentions = [] if self.compiled else vae_attention.mid_attentions(self.vae, part)
        positions = x.shape[-2] * x.shape[-1] // (LATENT_FACTOR**2 if part == "encoder" else 1)
        plans = [vae_attention.plan(a, x.shape[0], positions, self.device, self.vae_dtype, free, self.probe)
                 for a in attentions]
        with vae_tiling.block_progress(blocks, progress, attentions, plans):
            x = self._layout(x.to(self.device, self.vae_dtype))
            if part == "encoder":
                out = self.vae.encoder(x)
                out = out if self.vae.quant_conv is None else self.vae.quant_conv(out)
            else:
                x = x if self.vae.post_quant_conv is None else self.vae.post_quant_conv(x)
                out = self.vae.decoder(x)
        if progress is not None and not blocks:
            progress(1, 1)
        return out.float()

    @torch.no_grad()
    def encode(self, pixels: torch.Tensor, *, vae_tile: int = default("vae_tile"), sample: bool = False,
               seed: int | None = None, progress: ProgressFn | None = None) -> torch.Tensor:
        """pixels [B,3,H,W] in [-1,1] (H, W multiples of 8) -> unscaled latent [B,4,H/8,W/8],
        float32 on the compute device. The posterior mean by default; a seeded sample with sample=True."""
        _check_pixels(pixels)
        tile = self.vae_tile_for("encode", pixels.shape[-2:], vae_tile)
        moments = self._finite("vae", "VAE encode", lambda: self._vae(
            "encoder", pixels, tile, pixels.shape[-2:], progress))
        mean, logvar = moments.chunk(2, dim=1)  # diffusers' DiagonalGaussianDistribution
        if not sample:
            return mean
        generator = torch.Generator(device="cpu").manual_seed(0 if seed is None else seed)
        noise = torch.randn(mean.shape, generator=generator).to(mean.device)
        return mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * noise

    @torch.no_grad()
    def predict_eps(self, latent: torch.Tensor, *, need: Sequence[str] = (PIX, PISA),
                    latent_tile: int = default("latent_tile"), latent_overlap: int = default("latent_overlap"),
                    tile_batch: int = default("tile_batch"), progress: ProgressFn | None = None) -> dict[str, torch.Tensor]:
        """ε of the requested branches ("pix", "pisa") for an unscaled latent, in the scaled latent
        space, float32 on the compute device. Both branches run as one batch of two (pix, pix+sem)."""
        need = tuple(dict.fromkeys(need))
        if not need:
            return {}
        if any(n not in (PIX, PISA) for n in need):
            raise PiSAError(f"unknown ε branch in {need}; expected 'pix' and/or 'pisa'.")
        z_lq = latent.to(self.device, torch.float32) * self.scaling_factor
        sem_off = [n == PIX for n in need]

        def run(tiles: torch.Tensor) -> torch.Tensor:
            batch = self._layout(tiles.to(self.unet_dtype).repeat(len(need), 1, 1, 1))
            eps = self.unet(batch, self.prompt_embeds.to(self.unet_dtype), sem_off=sem_off).float()
            return torch.cat(eps.chunk(len(need), dim=0), dim=1)  # branches side by side in channels

        stacked = self._finite("unet", "UNet", lambda: tiled_latent_map(
            z_lq, run, tile=latent_tile, overlap=latent_overlap, max_batch=tile_batch, progress=progress))
        return dict(zip(need, stacked.chunk(len(need), dim=1)))

    @torch.no_grad()
    def guide(self, latent: torch.Tensor, eps: dict[str, torch.Tensor], lambda_pix: Lambda = default("lambda_pix"),
              lambda_sem: Lambda = default("lambda_sem"), *, plan: Plan | None = None) -> torch.Tensor:
        """z_H (unscaled) for (λ_pix, λ_sem) from already predicted ε: no UNet pass. A λ is a number
        or a map (region-aware guidance: ε(x) = λ_pix(x)·ε_pix(x) + λ_sem(x)·(ε_PiSA(x) − ε_pix(x)));
        maps are over the low-quality input of `plan` (geometry.map_to_latent), or over the latent
        without one. `eps` must hold the branches plan_passes(λ_pix, λ_sem) names."""
        z_lq = latent.to(self.device, torch.float32) * self.scaling_factor
        lambdas = [self._on_latent(value, name, plan, z_lq) for value, name in
                   ((lambda_pix, "lambda_pix"), (lambda_sem, "lambda_sem"))]
        passes = plan_passes(*lambdas)
        missing = [b for b in passes.branches if b not in eps]
        if missing:
            raise PiSAError(f"guide needs ε {', '.join(missing)} for these λ; run predict_eps with "
                            "need=plan_passes(λ_pix, λ_sem).branches first.")
        eps = {b: eps[b].to(self.device, torch.float32) for b in passes.branches}
        z_high = residual_latent(z_lq, passes.combine(eps, like=z_lq)) / self.scaling_factor
        if not _all_finite(z_high):
            raise PiSAError(f"Guidance with lambda_pix {describe_lambda(lambdas[0])} and lambda_sem "
                            f"{describe_lambda(lambdas[1])} gave NaN or infinite latents (the UNet ran in "
                            f"{options.dtype_name(self.unet_dtype)}); the predicted ε is not finite.")
        return z_high

    def _on_latent(self, value: Lambda, name: str, plan: Plan | None, z_lq: torch.Tensor) -> Lambda:
        value = check_lambda(value, name)
        if not torch.is_tensor(value):
            return value
        return map_to_latent(value.cpu(), plan, z_lq.shape[-2:], z_lq.shape[0]).to(self.device)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor, *, vae_tile: int = default("vae_tile"),
               progress: ProgressFn | None = None) -> torch.Tensor:
        """Unscaled latent -> image [B,3,8h,8w] in [-1,1], float32 on the compute device."""
        size = (latent.shape[-2] * LATENT_FACTOR, latent.shape[-1] * LATENT_FACTOR)
        tile = self.vae_tile_for("decode", size, vae_tile)
        image = self._finite("vae", "VAE decode", lambda: self._vae("decoder", latent.float(), tile, size, progress),
                             latent=latent)
        return image.clamp_(-1, 1)

    @torch.no_grad()
    def finish(self, decoded: torch.Tensor, plan: Plan, *, color_fix: str = default("color_fix"),
               reference: torch.Tensor | None = None) -> torch.Tensor:
        """Decoded [B,3,Hp,Wp] in [-1,1] -> [B,H,W,C] float32 in [0,1] on the CPU: padding cropped,
        colour fix against `reference` ([B,3,h,w] in [0,1], any size; default: the enlarged LQ of
        the plan), resized to the plan's output size, the input's channel layout (gray, alpha)."""
        if color_fix not in options.COLOR_FIXES:
            raise PiSAError(f"color_fix must be one of {', '.join(options.COLOR_FIXES)}; got {color_fix!r}.")
        out01 = to_unit_range(to_host(decoded), plan)
        if color_fix != "none":
            if reference is not None:
                reference = resize(reference.float().cpu(), plan.work_size, plan.resampling)
            else:
                reference = plan.reference()
            if reference is None:
                raise PiSAError(f"color_fix {color_fix!r} needs a colour reference, and this latent carries no "
                                "input image; give one, or use color_fix 'none'.")
            out01 = apply_color_fix(out01, reference, color_fix)
        return merge_channels(to_output_size(out01, plan), plan)

    # --- the whole path ---------------------------------------------------------------------

    @torch.no_grad()
    def __call__(self, images, *, upscale: float = default("upscale"), lambda_pix: Lambda = default("lambda_pix"),
                 lambda_sem: Lambda = default("lambda_sem"), color_fix: str = default("color_fix"),
                 latent_tile: int = default("latent_tile"), latent_overlap: int = default("latent_overlap"),
                 vae_tile: int = default("vae_tile"), geometry: str = default("geometry"),
                 process_size: int = default("process_size"), resampling: str = default("resampling"),
                 sample: bool = default("sample"), seed: int = default("seed"),
                 tile_batch: int = default("tile_batch"), progress: ProgressFn | None = None) -> torch.Tensor:
        """images: float tensor [B,H,W,C] in [0,1] with C = 1 (gray), 2 (gray+alpha), 3 or 4
        (RGBA), uint8 in 0..255, or a list of 8-bit RGB Pillow images (the release geometry's
        exact input); colours are taken as sRGB (pisa_core.read_image converts ICC profiles). Returns [B,H',W',C] float32 in [0,1] on the CPU (C as given; 3 for Pillow
        input). λ_pix / λ_sem: numbers, or maps over the input image ([h,w], [B,h,w] or [B,1,h,w], any
        resolution) for region-aware guidance. progress(done, total) counts over the three model
        stages."""
        check_options(lambda_pix=lambda_pix, lambda_sem=lambda_sem, color_fix=color_fix, latent_tile=latent_tile,
                      latent_overlap=latent_overlap, vae_tile=vae_tile, tile_batch=tile_batch)
        steps = Progress(3 * STAGE_STEPS, progress)
        pixels, plan = self.prepare(images, upscale=upscale, geometry=geometry, process_size=process_size,
                                    resampling=resampling)
        latent = self.encode(pixels, vae_tile=vae_tile, sample=sample, seed=seed, progress=steps.stage())
        del pixels
        eps = self.predict_eps(latent, need=plan_passes(lambda_pix, lambda_sem).branches, latent_tile=latent_tile,
                               latent_overlap=latent_overlap, tile_batch=tile_batch, progress=steps.stage())
        z_high = self.guide(latent, eps, lambda_pix, lambda_sem, plan=plan)
        del latent, eps
        decoded = self.decode(z_high, vae_tile=vae_tile, progress=steps.stage())
        return self.finish(decoded, plan, color_fix=color_fix)


def _check_pixels(pixels: torch.Tensor) -> None:
    if not torch.is_tensor(pixels) or pixels.dim() != 4 or pixels.shape[1] != 3:
        shape = tuple(pixels.shape) if torch.is_tensor(pixels) else type(pixels).__name__
        raise PiSAError(f"expected pixels [B,3,H,W] in [-1, 1], got {shape}.")
    if pixels.shape[-1] % LATENT_FACTOR or pixels.shape[-2] % LATENT_FACTOR:
        raise PiSAError(f"image sides must be multiples of {LATENT_FACTOR} for the VAE, got "
                        f"{pixels.shape[-1]}x{pixels.shape[-2]}.")


def check_options(*, lambda_pix=None, lambda_sem=None, color_fix=None, latent_tile=None, latent_overlap=None,
                  vae_tile=None, tile_batch=None) -> None:
    """Option checks shared by every front end (before any model work)."""
    for name, value in (("lambda_pix", lambda_pix), ("lambda_sem", lambda_sem)):
        if value is not None:
            check_lambda(value, name)
    if color_fix is not None and color_fix not in options.COLOR_FIXES:
        raise PiSAError(f"color_fix must be one of {', '.join(options.COLOR_FIXES)}; got {color_fix!r}.")
    if latent_tile is not None and latent_tile < 1:
        raise PiSAError(f"latent_tile must be at least 1; got {latent_tile}.")
    if latent_tile is not None and not 0 <= (latent_overlap or 0) < latent_tile:
        raise PiSAError(f"latent_overlap ({latent_overlap}) must be smaller than latent_tile ({latent_tile}) "
                        "and not negative.")
    if vae_tile is not None:
        memory.check_vae_tile(vae_tile)
    if tile_batch is not None and (not isinstance(tile_batch, int) or tile_batch < 1):
        raise PiSAError(f"tile_batch must be a positive integer; got {tile_batch!r}.")
