"""Colour fix: AdaIN and wavelet (docs/release.md, "Colour fix") on float tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pisa_core.colorfix import (
    adain_color_fix,
    apply_color_fix,
    channel_mean_std,
    wavelet_blur,
    wavelet_color_fix,
    wavelet_decompose,
)
from pisa_core.errors import PiSAError


def smooth_image(b, c, h, w, seed, lo=0.3, hi=0.7):
    """A smooth image well inside (0, 1), so colour fixes do not clamp."""
    g = torch.Generator().manual_seed(seed)
    small = torch.rand(b, c, max(2, h // 8), max(2, w // 8), generator=g)
    return lo + (hi - lo) * F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


# --- independent float64 re-statements of the release formulas --------------------------------

def adain_f64(image: np.ndarray, ref: np.ndarray) -> np.ndarray:
    out = np.empty_like(image)
    for b in range(image.shape[0]):
        for c in range(image.shape[1]):
            x, r = image[b, c], ref[b, c]
            sx = np.sqrt(x.var(ddof=1) + 1e-5)
            sr = np.sqrt(r.var(ddof=1) + 1e-5)
            out[b, c] = (x - x.mean()) / sx * sr + r.mean()
    return np.clip(out, 0, 1)


def blur_f64(x: np.ndarray, d: int) -> np.ndarray:
    k = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float64) / 16
    p = np.pad(x, ((0, 0), (0, 0), (d, d), (d, d)), mode="edge")
    h, w = x.shape[-2:]
    out = np.zeros_like(x)
    for i in range(3):
        for j in range(3):
            out += k[i, j] * p[..., i * d:i * d + h, j * d:j * d + w]
    return out


def wavelet_f64(image: np.ndarray, ref: np.ndarray, levels: int = 5) -> np.ndarray:
    def decompose(x):
        high = np.zeros_like(x)
        for i in range(levels):
            low = blur_f64(x, 2 ** i)
            high += x - low
            x = low
        return high, x
    return np.clip(decompose(image)[0] + decompose(ref)[1], 0, 1)


# --- AdaIN --------------------------------------------------------------------------------------

def test_adain_takes_reference_statistics():
    image = smooth_image(2, 3, 40, 56, seed=0, lo=0.4, hi=0.6)
    ref = smooth_image(2, 3, 40, 56, seed=1, lo=0.3, hi=0.7)
    out = adain_color_fix(image, ref)
    assert 0 < out.min() and out.max() < 1            # no clamping happened on these images
    torch.testing.assert_close(out.mean(dim=(2, 3)), ref.mean(dim=(2, 3)), rtol=0, atol=1e-6)
    # std = sqrt(var + 1e-5) on both sides (release), so the plain std of the output is
    # std_ref_eps * std_image / std_image_eps: the reference's std up to that floor
    std_i, std_r, std_o = (t.std(dim=(2, 3)) for t in (image, ref, out))
    expected = (std_r ** 2 + 1e-5).sqrt() * std_i / (std_i ** 2 + 1e-5).sqrt()
    torch.testing.assert_close(std_o, expected, rtol=1e-5, atol=0)
    torch.testing.assert_close(std_o, std_r, rtol=1e-2, atol=0)
    torch.testing.assert_close(channel_mean_std(out)[1], channel_mean_std(ref)[1], rtol=1e-2, atol=0)


def test_adain_against_itself_is_identity():
    image = smooth_image(2, 4, 32, 24, seed=2)
    torch.testing.assert_close(adain_color_fix(image, image), image, rtol=0, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 3, 17, 29), (3, 1, 8, 8), (2, 4, 5, 64), (1, 3, 1, 1)])
def test_adain_matches_float64(shape):
    g = torch.Generator().manual_seed(sum(shape))
    image, ref = torch.rand(shape, generator=g), torch.rand(shape, generator=g) * 0.5 + 0.2
    got = adain_color_fix(image, ref)
    if shape[-1] * shape[-2] == 1:     # no unbiased variance of one pixel: the variance counts as 0
        torch.testing.assert_close(got, ref)
        return
    np.testing.assert_allclose(got.numpy(), adain_f64(image.double().numpy(), ref.double().numpy()),
                               rtol=0, atol=2e-6)
    assert got.dtype == torch.float32


def test_adain_clamps_to_unit_range():
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    ref = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(4)) * 3 - 1   # wide spread
    out = adain_color_fix(image, ref)
    assert out.min() == 0 and out.max() == 1


# --- wavelet ------------------------------------------------------------------------------------

def test_wavelet_with_itself_is_identity():
    image = torch.rand(2, 3, 40, 33, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(wavelet_color_fix(image, image), image, rtol=0, atol=1e-6)


def test_wavelet_keeps_high_band_and_takes_reference_low_band():
    image = smooth_image(1, 3, 48, 64, seed=6, lo=0.35, hi=0.65)
    ref = smooth_image(1, 3, 48, 64, seed=7, lo=0.3, hi=0.6)
    out = wavelet_color_fix(image, ref)
    assert 0 < out.min() and out.max() < 1
    high_i, low_i = wavelet_decompose(image)
    _, low_r = wavelet_decompose(ref)
    torch.testing.assert_close(high_i + low_i, image, rtol=0, atol=1e-6)    # the bands split the image
    torch.testing.assert_close(out - low_r, high_i, rtol=0, atol=1e-6)      # output's own bands + ref's low
    # a colour cast in the reference (its low band shifts by c) moves the output by exactly c
    cast = torch.tensor([0.05, -0.1, 0.02]).view(1, 3, 1, 1)
    torch.testing.assert_close(wavelet_color_fix(image, ref + cast), out + cast, rtol=0, atol=1e-6)
    # the output's low band lies close to the reference's, far from the image's
    low_o = wavelet_decompose(out)[1]
    assert (low_o - low_r).abs().mean() < 0.2 * (low_i - low_r).abs().mean()


def test_wavelet_blur_kernel_and_padding():
    x = torch.zeros(1, 2, 9, 9)
    x[0, 0, 4, 4] = 16.0
    y = wavelet_blur(x, 2)
    expected = torch.zeros(9, 9)
    for (i, j), v in {(2, 2): 1, (2, 4): 2, (2, 6): 1, (4, 2): 2, (4, 4): 4, (4, 6): 2, (6, 2): 1, (6, 4): 2, (6, 6): 1}.items():
        expected[i, j] = v
    torch.testing.assert_close(y[0, 0], expected)
    assert y[0, 1].abs().max() == 0                                  # channels stay separate
    const = torch.full((1, 1, 3, 5), 0.7)
    torch.testing.assert_close(wavelet_blur(const, 16), const)       # replicate padding beyond the size


@pytest.mark.parametrize("shape", [(1, 3, 20, 37), (2, 1, 8, 8), (1, 4, 3, 50), (1, 3, 1, 1)])
def test_wavelet_matches_float64(shape):
    g = torch.Generator().manual_seed(sum(shape) + 1)
    image, ref = torch.rand(shape, generator=g), torch.rand(shape, generator=g)
    got = wavelet_color_fix(image, ref)
    np.testing.assert_allclose(got.numpy(), wavelet_f64(image.double().numpy(), ref.double().numpy()),
                               rtol=0, atol=2e-6)


# --- both ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["adain", "wavelet"])
def test_batch_images_are_independent(mode):
    image = torch.rand(3, 3, 24, 20, generator=torch.Generator().manual_seed(8))
    ref = torch.rand(3, 3, 24, 20, generator=torch.Generator().manual_seed(9))
    whole = apply_color_fix(image, ref, mode)
    for b in range(3):
        torch.testing.assert_close(whole[b:b + 1], apply_color_fix(image[b:b + 1], ref[b:b + 1], mode),
                                   rtol=0, atol=1e-6)
    changed = image.clone()
    changed[1] = 1 - changed[1]
    after = apply_color_fix(changed, ref, mode)
    torch.testing.assert_close(after[0], whole[0], rtol=0, atol=0)
    torch.testing.assert_close(after[2], whole[2], rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["adain", "wavelet"])
def test_half_precision_input_computes_in_float32(mode):
    image, ref = smooth_image(1, 3, 16, 16, seed=10), smooth_image(1, 3, 16, 16, seed=11)
    got = apply_color_fix(image.half(), ref.half(), mode)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, apply_color_fix(image.half().float(), ref.half().float(), mode))


def test_none_mode_and_errors():
    image = torch.rand(1, 3, 8, 8)
    assert apply_color_fix(image, None, "none") is image
    assert apply_color_fix(image, image, "AdaIN").shape == image.shape
    with pytest.raises(PiSAError, match="mode"):
        apply_color_fix(image, image, "histogram")
    with pytest.raises(PiSAError, match="same shape"):
        apply_color_fix(image, torch.rand(1, 3, 8, 9), "adain")
    with pytest.raises(PiSAError, match="same shape"):
        wavelet_color_fix(image, torch.rand(2, 3, 8, 8))
    with pytest.raises(PiSAError, match="4-D"):
        adain_color_fix(image[0], image[0])
    with pytest.raises(PiSAError, match="reference"):
        apply_color_fix(image, None, "wavelet")
    with pytest.raises(PiSAError, match="levels"):
        wavelet_color_fix(image, image, levels=0)
