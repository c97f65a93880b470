"""An independent, straightforward implementation with the structure of the authors' release.

It is the oracle of the parity tests and the naive baseline of the benchmarks; it shares no code
with pisa_core's inference path. Like the release it attaches the six peft adapters by name,
merges the pixel LoRA and keeps a full copy of W_pix, merges the semantic LoRA on top, swaps
weight sets between the two passes, encodes the prompt for every image, runs latent tiles one by
one with the release's loop, and does the resizing with Pillow. Differences, on purpose: the VAE
latent is the posterior mean (the release samples), the colour fix runs on float tensors (the
release rounds to 8 bit first), and the release's tiling crash / endless loop are not reproduced
(tests only use sizes where the release works).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from peft import LoraConfig
from peft.tuners.tuners_utils import BaseTunerLayer
from PIL import Image

FAMILIES = ("encoder", "decoder", "others")


def _attach(unet, state: dict, kind: str) -> None:
    """Add the three adapters of one kind ("pix" / "sem") the way the release does (peft, rank r,
    default alpha 8) and copy the stored tensors in."""
    rank = state[f"lora_rank_unet_{kind}"]
    for family in FAMILIES:
        modules = state[f"unet_lora_{family}_modules_{kind}"]
        unet.add_adapter(LoraConfig(r=rank, init_lora_weights="gaussian", target_modules=modules),
                         adapter_name=f"default_{family}_{kind}")
    params = dict(unet.named_parameters())
    with torch.no_grad():
        for name, tensor in state["state_dict_unet"].items():
            if name.endswith(f"_{kind}.weight"):
                params[name].copy_(tensor)


def _merge_and_unload(unet, adapters: list[str]) -> None:
    """Merge the named adapters into the base weights and put the plain layers back."""
    for name, module in list(unet.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge(adapter_names=[a for a in adapters if a in module.lora_A])
            parent_name, _, child = name.rpartition(".")
            setattr(unet.get_submodule(parent_name), child, module.get_base_layer())


def attach_unmerged(unet, pkl_path) -> None:
    """All six adapters attached with peft and active, nothing merged: the naive way to run PiSA."""
    state = torch.load(pkl_path, map_location="cpu", weights_only=True)
    _attach(unet, state, "pix")
    _attach(unet, state, "sem")
    unet.set_adapters([f"default_{f}_{k}" for k in ("pix", "sem") for f in FAMILIES])


def gaussian_weights_release(tile_width: int, tile_height: int) -> torch.Tensor:
    """The release's tile weights (float64 numpy, as it computes them)."""
    var = 0.01
    mid_x, mid_y = (tile_width - 1) / 2, (tile_height - 1) / 2
    xs = [np.exp(-(x - mid_x) ** 2 / (2 * tile_width ** 2 * var)) / np.sqrt(2 * np.pi * var) for x in range(tile_width)]
    ys = [np.exp(-(y - mid_y) ** 2 / (2 * tile_height ** 2 * var)) / np.sqrt(2 * np.pi * var) for y in range(tile_height)]
    return torch.tensor(np.outer(ys, xs))


def release_tile_offsets(length: int, tile: int, overlap: int) -> list[int]:
    """Offsets of the release's tiling loop along one axis (square tiles, last one flush with the end)."""
    count, end = 0, 0
    while end < length:
        end = max(count * tile - overlap * count, 0) + tile
        count += 1
    offsets = [max(i * tile - overlap * i, 0) for i in range(count)]
    offsets[-1] = length - tile
    return offsets


class ReleaseStyleSR:
    """PiSA-SR inference with the release's structure, on CPU in float32."""

    def __init__(self, unet, vae, text_encoder, tokenizer, pkl_path, *, default: bool,
                 lambda_pix: float = 1.0, lambda_sem: float = 1.0, latent_tile: int = 96, latent_overlap: int = 32):
        state = torch.load(pkl_path, map_location="cpu", weights_only=True)
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.default = default
        self.lambda_pix, self.lambda_sem = lambda_pix, lambda_sem
        self.tile, self.overlap = latent_tile, latent_overlap
        _attach(unet, state, "pix")
        _merge_and_unload(unet, [f"default_{f}_pix" for f in FAMILIES])
        self.weights_pix = {n: p.detach().clone() for n, p in unet.named_parameters()}  # full copy no. 2
        _attach(unet, state, "sem")
        _merge_and_unload(unet, [f"default_{f}_sem" for f in FAMILIES])
        self.weights_pisa = {n: p.detach().clone() for n, p in unet.named_parameters()}  # full copy no. 3
        self.unet.eval()

    def _use(self, weights: dict) -> None:
        with torch.no_grad():
            for name, param in self.unet.named_parameters():
                param.copy_(weights[name])

    def encode_prompt(self, prompt: str) -> torch.Tensor:
        if self.tokenizer is None:  # benchmarks on random weights have no tokenizer files: SD2's ids of ""
            vocab = self.text_encoder.config.vocab_size
            ids = torch.tensor([[vocab - 2, vocab - 1] + [0] * 75])
        else:
            ids = self.tokenizer(prompt, max_length=self.tokenizer.model_max_length, padding="max_length",
                                 truncation=True, return_tensors="pt").input_ids
        return self.text_encoder(ids)[0]

    def _unet(self, latents, embeds):
        return self.unet(latents, torch.tensor([1]), encoder_hidden_states=embeds).sample

    def _eps(self, latents, embeds):
        if self.default:
            return self._unet(latents, embeds)
        eps_pisa = self._unet(latents, embeds)
        self._use(self.weights_pix)
        eps_pix = self._unet(latents, embeds)
        self._use(self.weights_pisa)
        return self.lambda_pix * eps_pix + self.lambda_sem * (eps_pisa - eps_pix)

    def _eps_tiled(self, latents, embeds):
        _, _, h, w = latents.shape
        if h * w <= self.tile * self.tile:
            return self._eps(latents, embeds)
        weights = gaussian_weights_release(self.tile, self.tile)
        total = torch.zeros(latents.shape, dtype=torch.float64)
        count = torch.zeros(latents.shape, dtype=torch.float64)
        for x0 in release_tile_offsets(w, self.tile, self.overlap):
            for y0 in release_tile_offsets(h, self.tile, self.overlap):
                tile = latents[:, :, y0:y0 + self.tile, x0:x0 + self.tile]
                total[:, :, y0:y0 + self.tile, x0:x0 + self.tile] += self._eps(tile, embeds) * weights
                count[:, :, y0:y0 + self.tile, x0:x0 + self.tile] += weights
        return (total / count).float()

    @torch.no_grad()
    def forward_tensor(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [1,3,H,W] in [-1,1] → output in [-1,1]."""
        embeds = self.encode_prompt("")
        sf = self.vae.config.scaling_factor
        z_lq = self.vae.encode(pixels).latent_dist.mean * sf
        z_hq = z_lq - self._eps_tiled(z_lq, embeds)
        return self.vae.decode(z_hq / sf).sample.clamp(-1, 1)

    @torch.no_grad()
    def upscale(self, image: Image.Image, *, upscale: int = 4, process_size: int = 512,
                color_fix: str = "adain") -> torch.Tensor:
        """The release's test script for one RGB Pillow image; returns [3,H,W] float in [0,1]."""
        ori_w, ori_h = image.size
        resized = False
        if ori_w < process_size // upscale or ori_h < process_size // upscale:
            scale = (process_size // upscale) / min(ori_w, ori_h)
            image = image.resize((int(scale * ori_w), int(scale * ori_h)))
            resized = True
        image = image.resize((image.size[0] * upscale, image.size[1] * upscale))
        image = image.resize((image.width - image.width % 8, image.height - image.height % 8), Image.LANCZOS)
        ref = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
        out = (self.forward_tensor(ref * 2 - 1) * 0.5 + 0.5).clamp(0, 1)
        if color_fix == "adain":
            out = adain_reference(out, ref)
        elif color_fix == "wavelet":
            out = wavelet_reference(out, ref)
        out = out[0]
        if resized:
            out = torch.stack([_float_resize(c, (upscale * ori_w, upscale * ori_h)) for c in out])
        return out


def _float_resize(plane: torch.Tensor, size_wh) -> torch.Tensor:
    """Pillow bicubic on one float plane: horizontal then vertical, clamped like 8-bit saturation."""
    arr = plane.numpy().astype(np.float32)
    if arr.shape[1] != size_wh[0]:
        arr = np.clip(np.asarray(Image.fromarray(arr).resize((size_wh[0], arr.shape[0]), Image.BICUBIC)), 0, 1)
    if arr.shape[0] != size_wh[1]:
        arr = np.clip(np.asarray(Image.fromarray(arr).resize(size_wh, Image.BICUBIC)), 0, 1)
    return torch.from_numpy(np.ascontiguousarray(arr))


def adain_reference(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """The release's AdaIN: per channel, std = sqrt(unbiased var + 1e-5); clamped."""
    def stats(t):
        flat = t.reshape(t.shape[0], t.shape[1], -1)
        return flat.mean(2)[..., None, None], (flat.var(2) + 1e-5).sqrt()[..., None, None]
    m_o, s_o = stats(out)
    m_r, s_r = stats(ref)
    return ((out - m_o) / s_o * s_r + m_r).clamp(0, 1)


def wavelet_reference(out: torch.Tensor, ref: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """The release's wavelet fix: 5 dilated 3x3 blurs; output highs + reference lows; clamped."""
    kernel = torch.tensor([[1., 2., 1.], [2., 4., 2.], [1., 2., 1.]]) / 16
    kernel = kernel[None, None].repeat(3, 1, 1, 1)

    def split(img):
        high = torch.zeros_like(img)
        for i in range(levels):
            r = 2 ** i
            low = F.conv2d(F.pad(img, (r, r, r, r), mode="replicate"), kernel, groups=3, dilation=r)
            high = high + (img - low)
            img = low
        return high, img

    return (split(out)[0] + split(ref)[1]).clamp(0, 1)
