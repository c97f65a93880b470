"""Colour fix: AdaIN and wavelet (docs/release.md, "Colour fix") and LAB (docs/images.md) on float
tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pisa_core.errors import PiSAError
from pisa_core.files.colorspace import srgb_to_xyz, xyz_to_lab
from pisa_core.files.images import read_image, write_image
from pisa_core.inference.colorfix import (
    adain_color_fix,
    apply_color_fix,
    channel_mean_std,
    lab_color_fix,
    wavelet_blur,
    wavelet_color_fix,
    wavelet_decompose,
)
from pisa_core.options import COLOR_FIXES


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


# Independent float64 re-statement of sRGB -> CIELAB and back, with the published constants:
# IEC 61966-2-1:1999 (transfer function and matrix) and CIE 15:2004 (CIELAB, D65 white of the matrix).
M_SRGB = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
WHITE = M_SRGB.sum(axis=1)


def lab_f64(rgb: np.ndarray) -> np.ndarray:
    """[..., 3] sRGB -> [..., 3] L*, a*, b*."""
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    t = lin @ M_SRGB.T / WHITE
    f = np.where(t > (6 / 29) ** 3, np.cbrt(t), t / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def srgb_from_lab_f64(lab: np.ndarray) -> np.ndarray:
    fy = (lab[..., 0] + 16) / 116
    f = np.stack([fy + lab[..., 1] / 500, fy, fy - lab[..., 2] / 200], -1)
    t = np.where(f > 6 / 29, f ** 3, 3 * (6 / 29) ** 2 * (f - 4 / 29))
    lin = (t * WHITE) @ np.linalg.inv(M_SRGB).T
    return np.where(lin <= 0.0031308, 12.92 * lin, 1.055 * np.abs(lin) ** (1 / 2.4) * np.sign(lin) - 0.055)


def transfer_f64(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Mean/std transfer over all pixels of [..., N, C] per channel (std: sqrt(unbiased var + 1e-5))."""
    sx = np.sqrt(x.var(axis=0, ddof=1) + 1e-5)
    sr = np.sqrt(ref.var(axis=0, ddof=1) + 1e-5)
    return (x - x.mean(axis=0)) / sx * sr + ref.mean(axis=0)


def lab_fix_f64(image: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """[C=3, H, W] pair -> the LAB-fixed image, computed pixel list by pixel list."""
    c, h, w = image.shape
    pixels, ref_pixels = image.reshape(c, -1).T, ref.reshape(c, -1).T
    fixed = srgb_from_lab_f64(transfer_f64(lab_f64(pixels), lab_f64(ref_pixels)))
    return np.clip(fixed.T.reshape(c, h, w), 0, 1)


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

@pytest.mark.parametrize("mode", ["adain", "wavelet", "lab"])
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


@pytest.mark.parametrize("mode", ["adain", "wavelet", "lab"])
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
    with pytest.raises(PiSAError, match="reference"):
        apply_color_fix(image, None, "lab")
    with pytest.raises(PiSAError, match="levels"):
        wavelet_color_fix(image, image, levels=0)


# --- LAB ----------------------------------------------------------------------------------------

def test_lab_is_appended_last_to_the_choices():
    assert COLOR_FIXES[:3] == ("adain", "wavelet", "none") and COLOR_FIXES[-1] == "lab"


def test_cielab_of_published_colours():
    """CIE 15 values of sRGB white, mid gray and the primaries with the IEC 61966-2-1 matrix."""
    colours = torch.tensor([[1.0, 1.0, 1.0], [0.5, 0.5, 0.5], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    lab = xyz_to_lab(srgb_to_xyz(colours, dim=-1), dim=-1)
    expected = torch.tensor([[100.0, 0.0, 0.0], [53.39, 0.0, 0.0], [53.24, 80.09, 67.20],
                             [87.73, -86.18, 83.18], [32.30, 79.19, -107.86]])
    torch.testing.assert_close(lab, expected, rtol=0, atol=0.05)


def test_lab_matches_a_hand_computed_transfer():
    image = smooth_image(2, 3, 6, 5, seed=20, lo=0.3, hi=0.6)
    ref = smooth_image(2, 3, 6, 5, seed=21, lo=0.35, hi=0.7)
    got = lab_color_fix(image, ref)
    assert 0 < float(got.min()) and float(got.max()) < 1  # nothing clipped: the statistics carry over exactly
    expected = np.stack([lab_fix_f64(image[b].double().numpy(), ref[b].double().numpy()) for b in range(2)])
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=2e-5)
    got_lab = lab_f64(got[0].permute(1, 2, 0).double().numpy()).reshape(-1, 3)
    ref_lab = lab_f64(ref[0].permute(1, 2, 0).double().numpy()).reshape(-1, 3)
    np.testing.assert_allclose(got_lab.mean(0), ref_lab.mean(0), atol=2e-3)  # the reference's statistics
    np.testing.assert_allclose(got_lab.std(0, ddof=1), ref_lab.std(0, ddof=1), rtol=1e-3)


def test_lab_on_gray_keeps_it_gray_and_matches_lightness():
    gray = smooth_image(1, 1, 8, 8, seed=22, lo=0.1, hi=0.5)
    ref = smooth_image(1, 1, 8, 8, seed=23, lo=0.4, hi=0.9)
    one = lab_color_fix(gray, ref)
    three = lab_color_fix(gray.expand(1, 3, 8, 8), ref.expand(1, 3, 8, 8))
    assert one.shape == (1, 1, 8, 8)
    assert float((three.amax(1) - three.amin(1)).max()) < 1e-4  # a* = b* = 0 stay 0: no tint
    torch.testing.assert_close(three[:, :1], one, rtol=0, atol=1e-4)
    expected = lab_fix_f64(gray.expand(3, -1, -1, -1)[:, 0].double().numpy(),
                           ref.expand(3, -1, -1, -1)[:, 0].double().numpy())
    np.testing.assert_allclose(one[0, 0].numpy(), expected[0], rtol=0, atol=2e-5)


def test_lab_keeps_the_alpha_channel_of_the_image():
    image, ref = torch.rand(1, 4, 8, 8), torch.rand(1, 4, 8, 8)
    got = lab_color_fix(image, ref)
    assert torch.equal(got[:, 3], image[:, 3])
    torch.testing.assert_close(got[:, :3], lab_color_fix(image[:, :3], ref[:, :3]))
    with pytest.raises(PiSAError, match="LAB colour fix: expected 1 to 4 channels"):
        lab_color_fix(torch.rand(1, 5, 4, 4), torch.rand(1, 5, 4, 4))


def test_lab_keeps_16_bit_precision_through_files(tmp_path):
    """A 16-bit gradient through the fix and a 16-bit file keeps thousands of levels (no 8-bit steps)."""
    ramp = torch.linspace(0.2, 0.6, 4096).reshape(1, 1, 64, 64)
    image = torch.cat([ramp, ramp * 0.9, ramp * 0.8], dim=1)
    write_image(tmp_path / "in.png", image[0].permute(1, 2, 0), bit_depth=16)
    read, info = read_image(tmp_path / "in.png")
    assert info.bit_depth == 16
    ref = smooth_image(1, 3, 64, 64, seed=24, lo=0.3, hi=0.7)
    fixed = apply_color_fix(read.permute(2, 0, 1)[None], ref, "lab")
    write_image(tmp_path / "out.png", fixed[0].permute(1, 2, 0), bit_depth=16)
    out, _ = read_image(tmp_path / "out.png")
    levels = torch.round(out[..., 0] * 65535).unique()
    assert len(levels) > 2000  # 8 bits would give at most 256
    expected = lab_fix_f64(read.permute(2, 0, 1).double().numpy(), ref[0].double().numpy())
    np.testing.assert_allclose(out.permute(2, 0, 1).numpy(), expected, rtol=0, atol=1 / 65535 + 2e-5)


def test_lab_computes_in_float32_without_float64():
    """Apple's MPS has no float64: no float64 tensor is made anywhere in the LAB fix."""
    from test_pipeline import DtypeRecorder

    image, ref = smooth_image(1, 3, 8, 8, seed=25), smooth_image(1, 3, 8, 8, seed=26)
    with DtypeRecorder() as recorder:
        out = apply_color_fix(image.half(), ref.half(), "lab")
    assert out.dtype == torch.float32
    assert torch.float32 in recorder.dtypes and torch.float64 not in recorder.dtypes
