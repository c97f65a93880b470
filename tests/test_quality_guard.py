"""Speed options keep the results: fp32 optimisations within 1e-4 of the plain path, half
precision within a documented tolerance of fp32 (docs/precision.md)."""

from __future__ import annotations

import pytest
import torch
from test_precision import skip_without_half_kernels

from pisa_core.inference.pipeline import PiSAPipeline


@pytest.fixture(scope="module")
def plain(model_dir):
    return PiSAPipeline.from_files(model_dir / "sd21-tiny", model_dir / "pisa_sr.pkl", device="cpu", dtype="fp32",
                                   channels_last=False)


def _run(pipe, image, **options):
    return pipe(image, process_size=0, lambda_pix=0.8, lambda_sem=1.2, **options)


def test_channels_last_stays_within_1e4(model_dir, plain, lq_image):
    fast = PiSAPipeline.from_files(model_dir / "sd21-tiny", model_dir / "pisa_sr.pkl", device="cpu", dtype="fp32",
                                   channels_last=True)
    image = lq_image(16, 24)
    assert (_run(fast, image) - _run(plain, image)).abs().max() <= 1e-4


def test_channels_last_reaches_every_convolution(model_dir, lq_image):
    """No convolution converts its input back to NHWC (diffusers' Transformer2D blocks return NCHW;
    the pipeline turns their outputs round), in both passes of the adjustable mode."""
    pipe = PiSAPipeline.from_files(model_dir / "sd21-tiny", model_dir / "pisa_sr.pkl", device="cpu", dtype="fp32",
                                   channels_last=True)
    seen, nchw = [], []

    def check(module, args):
        seen.append(module)
        if not args[0].is_contiguous(memory_format=torch.channels_last):
            nchw.append(f"{type(module).__name__} {tuple(args[0].shape)}")

    convs = [m for part in (pipe.unet, pipe.vae) for m in part.modules() if isinstance(m, torch.nn.Conv2d)]
    handles = [m.register_forward_pre_hook(check) for m in convs]
    try:
        _run(pipe, lq_image(16, 24))
    finally:
        for handle in handles:
            handle.remove()
    assert len(set(seen)) == len(convs) and not nchw, nchw[:5]


def test_batched_tiles_and_passes_stay_within_1e4(plain, lq_image):
    image = lq_image(24, 32)
    one = _run(plain, image, latent_tile=8, latent_overlap=4, tile_batch=1)
    many = _run(plain, image, latent_tile=8, latent_overlap=4, tile_batch=8)
    assert (one - many).abs().max() <= 1e-4


@pytest.mark.parametrize("dtype, mean_tol, max_tol", [("bf16", 0.03, 0.4), ("fp16", 0.005, 0.08)])
def test_half_precision_stays_close_to_fp32(model_dir, plain, lq_image, dtype, mean_tol, max_tol):
    half = PiSAPipeline.from_files(model_dir / "sd21-tiny", model_dir / "pisa_sr.pkl", device="cpu", dtype=dtype)
    image = lq_image(16, 24)
    try:
        diff = (_run(half, image) - _run(plain, image)).abs()
    except RuntimeError as error:
        skip_without_half_kernels(error)
    assert diff.mean() <= mean_tol and diff.max() <= max_tol, (diff.mean().item(), diff.max().item())
