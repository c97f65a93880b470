"""Parity with the release's structure (tests/release_reference.py: peft adapters by name, three
weight sets, the release's tiling loop and Pillow resizing) on identical tiny weights in the
official .pkl format: max difference ≤ 1e-4 on the [0,1] output."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from PIL import Image
from transformers import CLIPTextModel, CLIPTokenizer

pytest.importorskip("peft")  # the reference attaches the release's adapters with peft

from release_reference import ReleaseStyleSR, release_tile_offsets  # noqa: E402


def _reference(model_dir, **kwargs) -> ReleaseStyleSR:
    folder = model_dir / "sd21-tiny"
    return ReleaseStyleSR(
        UNet2DConditionModel.from_pretrained(folder, subfolder="unet").eval(),
        AutoencoderKL.from_pretrained(folder, subfolder="vae").eval(),
        CLIPTextModel.from_pretrained(folder, subfolder="text_encoder").eval(),
        CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer"),
        model_dir / "pisa_sr.pkl", **kwargs)


def _photo(w: int, h: int, seed: int = 0) -> Image.Image:
    g = np.random.default_rng(seed)
    coarse = Image.fromarray((g.random((max(2, h // 4), max(2, w // 4), 3)) * 255).astype(np.uint8))
    return coarse.resize((w, h), Image.BILINEAR)


CASES = {
    "default": dict(lp=1.0, ls=1.0, fix="adain", size=(16, 16), process=64, tile=(96, 32)),
    "adjustable": dict(lp=0.8, ls=1.2, fix="adain", size=(16, 24), process=64, tile=(96, 32)),
    "pix-only-wavelet": dict(lp=1.0, ls=0.0, fix="wavelet", size=(24, 16), process=64, tile=(96, 32)),
    "tiled-16-8": dict(lp=0.5, ls=1.5, fix="adain", size=(64, 48), process=128, tile=(16, 8)),
    "small-input": dict(lp=1.0, ls=1.0, fix="adain", size=(24, 20), process=128, tile=(96, 32)),
}


@pytest.mark.parametrize("case", CASES)
def test_release_parity(model_dir, pipe, case):
    c = CASES[case]
    image = _photo(*c["size"])
    reference = _reference(model_dir, default=(c["lp"] == c["ls"] == 1.0), lambda_pix=c["lp"], lambda_sem=c["ls"],
                           latent_tile=c["tile"][0], latent_overlap=c["tile"][1])
    expected = reference.upscale(image, upscale=4, process_size=c["process"], color_fix=c["fix"])
    tiles = []  # the spatial size of every UNet call of ours
    hook = pipe.unet.unet.register_forward_pre_hook(lambda module, args: tiles.append(tuple(args[0].shape[-2:])))
    try:
        ours = pipe([image], upscale=4, lambda_pix=c["lp"], lambda_sem=c["ls"], color_fix=c["fix"],
                    geometry="release", process_size=c["process"], latent_tile=c["tile"][0],
                    latent_overlap=c["tile"][1])[0].permute(2, 0, 1)
    finally:
        hook.remove()
    assert ours.shape == expected.shape
    assert (ours - expected).abs().max().item() <= 1e-4
    latent_h, latent_w = (s // 8 for s in expected.shape[-2:])
    tile, overlap = c["tile"]
    if latent_h * latent_w > tile * tile:  # the tiled case: one UNet call per tile of the release's grid
        grid = len(release_tile_offsets(latent_h, tile, overlap)) * len(release_tile_offsets(latent_w, tile, overlap))
        assert grid > 1 and tiles == [(tile, tile)] * grid
    else:
        assert len(tiles) == 1


def test_release_geometry_float_input_follows_the_pillow_8bit_path():
    """Float input takes Pillow's filters in float: within 8-bit rounding of the 8-bit path."""
    from pisa_core.inference.geometry import prepare

    image = _photo(24, 20, seed=4)
    as_tensor = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255)[None]
    _, a = prepare([image], upscale=4, geometry="release", process_size=128)
    _, b = prepare(as_tensor, upscale=4, geometry="release", process_size=128)
    assert a.out_size == b.out_size == (80, 96)
    assert a.reference().shape == b.reference().shape
    assert (a.reference() - b.reference()).abs().max() <= 2.5 / 255
