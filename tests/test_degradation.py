"""Real-ESRGAN-style degradation: determinism, shapes, ranges and each operator's effect."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pisa_core.cli.train import degrade_main
from pisa_core.errors import PiSAError
from pisa_core.train import degradation as D


def photo(h=64, w=64, seed=0) -> torch.Tensor:
    """Smooth random structure plus fine texture, [3,H,W] in [0,1]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, h // 8, w // 8, generator=g)
    img = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)[0]
    return (0.8 * img + 0.2 * torch.rand(3, h, w, generator=g)).clamp(0, 1)


def high_freq_energy(img: torch.Tensor) -> float:
    lap = torch.tensor([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=torch.float32)
    return float(D.filter2d(img, lap)[:, 2:-2, 2:-2].pow(2).mean())


# ----------------------------------------------------------------------------- whole pipeline


def test_degrade_is_reproducible_per_seed_and_index():
    hq = photo()
    a = D.degrade(hq, seed=3, index=7)
    assert torch.equal(a, D.degrade(hq, seed=3, index=7))
    assert not torch.equal(a, D.degrade(hq, seed=3, index=8))
    assert not torch.equal(a, D.degrade(hq, seed=4, index=7))


def test_degrade_shapes_range_and_8bit_levels():
    hq = photo(64, 96)
    small = D.degrade(hq, seed=0, index=1, resize_back=False)
    back = D.degrade(hq, seed=0, index=1, resize_back=True)
    assert small.shape == (3, 16, 24) and back.shape == (3, 64, 96)
    for x in (small, back):
        assert x.dtype == torch.float32 and x.min() >= 0 and x.max() <= 1
        levels = x * 255
        assert torch.equal(levels, levels.round())


def test_degrade_loses_information_on_average():
    hq = photo(64, 64, seed=2)
    errors = [float((D.degrade(hq, seed=0, index=i) - hq).pow(2).mean()) for i in range(6)]
    assert min(errors) > 1e-4
    # the LQ keeps the low frequencies: much closer to the HQ than an unrelated image
    unrelated = float((photo(64, 64, seed=9) - hq).pow(2).mean())
    assert np.mean(errors) < unrelated


def test_degrade_rejects_bad_input():
    with pytest.raises(PiSAError, match="multiples of 4"):
        D.degrade(torch.rand(3, 30, 32))
    with pytest.raises(PiSAError, match=r"\[3, H, W\]"):
        D.degrade(torch.rand(1, 3, 32, 32))


def test_random_choices_follow_the_release_ranges():
    cfg = D.DegradationConfig()
    scales = []
    for i in range(300):
        rng = D.SampleRNG(0, i)
        scales.append(D._random_scale(rng, cfg.resize_prob, cfg.resize_range))
    scales = np.array(scales)
    assert scales.min() >= 0.3 and scales.max() <= 1.5
    # down 0.7, up 0.2, keep 0.1
    assert 0.6 < np.mean(scales < 1) < 0.8
    assert 0.05 < np.mean(scales == 1) < 0.17


# ----------------------------------------------------------------------------- kernels


def test_kernels_are_normalised_and_shaped():
    for k in (D.gaussian_kernel(21, 2, 1, 0.3), D.generalized_gaussian_kernel(15, 1.5, 1.5, 0, 0.7),
              D.plateau_kernel(9, 1, 2, 1.0, 1.5), D.sinc_kernel(13, 1.0)):
        assert abs(k.sum() - 1) < 1e-6
        assert k.shape[0] == k.shape[1] and k.shape[0] % 2 == 1
    assert D.pad_kernel(D.gaussian_kernel(7, 1, 1, 0), 21).shape == (21, 21)


def test_generalized_with_beta_one_is_gaussian_and_plateau_differs():
    g = D.gaussian_kernel(21, 2.0, 1.0, 0.4)
    assert np.allclose(D.generalized_gaussian_kernel(21, 2.0, 1.0, 0.4, 1.0), g)
    assert not np.allclose(D.plateau_kernel(21, 2.0, 1.0, 0.4, 1.0), g, atol=1e-3)


def test_isotropic_kernel_is_symmetric_anisotropic_rotates():
    iso = D.gaussian_kernel(21, 2.0, 2.0, 0.0)
    assert np.allclose(iso, iso.T) and np.allclose(iso, iso[::-1])
    aniso = D.gaussian_kernel(21, 3.0, 0.5, 0.0)
    assert np.allclose(D.gaussian_kernel(21, 3.0, 0.5, math.pi / 2), aniso.T, atol=1e-9)
    assert not np.allclose(aniso, aniso.T)


def test_sinc_kernel_rings():
    k = D.sinc_kernel(21, math.pi / 4)
    assert k.min() < 0  # negative lobes: the ringing/overshoot artefact
    assert k[10, 10] == k.max()


def test_random_kernels_come_from_every_family():
    cfg = D.DegradationConfig()
    sums, sinc_like = [], 0
    for i in range(200):
        k = D.random_blur_kernel(D.SampleRNG(1, i), cfg, second=False)
        assert k.shape == (21, 21)
        sums.append(k.sum())
        sinc_like += int(k.min() < -1e-6)
    assert np.allclose(sums, 1, atol=1e-5)
    assert 5 <= sinc_like <= 45  # sinc probability 0.1 (plus nothing else has negative taps)


# ----------------------------------------------------------------------------- operators


def test_blur_lowers_high_frequency_energy():
    img = photo()
    blurred = D.filter2d(img, D.gaussian_kernel(21, 2.0, 2.0, 0.0))
    assert high_freq_energy(blurred) < 0.2 * high_freq_energy(img)
    assert torch.allclose(blurred.mean(), img.mean(), atol=0.02)  # a normalised kernel keeps brightness


def test_resize_changes_size_with_every_mode():
    img = photo()
    for mode in D.RESIZE_MODES:
        assert D.resize(img, (16, 24), mode).shape == (3, 16, 24)


def test_gaussian_noise_raises_variance_and_gray_noise_is_shared():
    flat = torch.full((3, 64, 64), 0.5)
    noisy = D.add_gaussian_noise(flat, 10.0, False, torch.Generator().manual_seed(0))
    assert abs(float(noisy.std()) - 10 / 255) < 0.005
    gray = D.add_gaussian_noise(flat, 10.0, True, torch.Generator().manual_seed(0))
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert not torch.equal(noisy[0], noisy[1])


def test_poisson_noise_grows_with_brightness():
    g = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 1, 256).repeat(3, 64, 1)  # all 256 levels present
    dark, bright = ramp.clone(), ramp.clone()
    dark[:, :, :] = 0.1
    bright[:, :, :] = 0.8
    dark[:, 0, :] = ramp[:, 0, :]
    bright[:, 0, :] = ramp[:, 0, :]
    nd = D.add_poisson_noise(dark, 1.0, False, g)[:, 1:] - 0.1
    nb = D.add_poisson_noise(bright, 1.0, False, g)[:, 1:] - 0.8
    assert float(nb.var()) > 2 * float(nd.var()) > 0
    gray = D.add_poisson_noise(bright, 1.0, True, g)
    assert torch.equal(gray[0], gray[1])


def test_jpeg_quality_changes_the_result():
    img = photo()
    low, high = D.jpeg_compress(img, 10), D.jpeg_compress(img, 95)
    err_low, err_high = float((low - img).pow(2).mean()), float((high - img).pow(2).mean())
    assert err_low > 2 * err_high > 0
    assert torch.equal(low, D.jpeg_compress(img, 10))  # real codec, deterministic


def test_quantize_8bit():
    x = torch.tensor([-0.2, 0.0, 0.5, 0.1234, 1.3])
    q = D.quantize_8bit(x)
    assert q.min() == 0 and q.max() == 1 and torch.equal(q * 255, (q * 255).round())


# ----------------------------------------------------------------------------- CLI


def test_degrade_cli_writes_reproducible_pairs(tmp_path):
    src = tmp_path / "hq"
    src.mkdir()
    for i in range(2):
        arr = (photo(66, 70, seed=i).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        Image.fromarray(arr).save(src / f"im{i}.png")
    assert degrade_main([str(src), "-o", str(tmp_path / "a"), "--seed", "5", "--hq-output", str(tmp_path / "gt")]) == 0
    assert degrade_main([str(src), "-o", str(tmp_path / "b"), "--seed", "5"]) == 0
    assert degrade_main([str(src), "-o", str(tmp_path / "c"), "--seed", "6", "--keep-size"]) == 0
    for i in range(2):
        a = (tmp_path / "a" / f"im{i}.png").read_bytes()
        assert a == (tmp_path / "b" / f"im{i}.png").read_bytes()
        assert Image.open(tmp_path / "a" / f"im{i}.png").size == (17, 16)   # 70x66 -> cropped to 68x64 -> /4
        assert Image.open(tmp_path / "gt" / f"im{i}.png").size == (68, 64)
        assert Image.open(tmp_path / "c" / f"im{i}.png").size == (68, 64)
    assert (tmp_path / "a" / "im0.png").read_bytes() != (tmp_path / "a" / "im1.png").read_bytes()
