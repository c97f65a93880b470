"""Latent tiling (release parity) on CPU (the VAE's exact tiles: test_vae_tiling.py)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from release_reference import gaussian_weights_release, release_tile_offsets

from pisa_core.errors import PiSAError
from pisa_core.inference.tiling import (
    gaussian_profile,
    gaussian_tile_weights,
    latent_tile_grid,
    needs_latent_tiling,
    tile_starts,
    tiled_latent_map,
)

# ---------------------------------------------------------------------------------------------
# Independent re-statements of the release behaviour (from docs/release.md, float64 numpy)
# ---------------------------------------------------------------------------------------------

def release_tiled(latent: np.ndarray, fn, tile: int, overlap: int) -> np.ndarray:
    """Release stitching in float64: x tiles outer, y tiles inner, square tiles, contributors sum."""
    _, _, h, w = latent.shape
    ys, xs = release_tile_offsets(h, tile, overlap), release_tile_offsets(w, tile, overlap)
    weights = gaussian_weights_release(tile, tile).numpy()
    out = None
    contributors = np.zeros((h, w))
    for x0 in xs:
        for y0 in ys:
            pred = fn(latent[:, :, y0:y0 + tile, x0:x0 + tile])
            if out is None:
                out = np.zeros((latent.shape[0], pred.shape[1], h, w))
            out[:, :, y0:y0 + tile, x0:x0 + tile] += pred * weights
            contributors[y0:y0 + tile, x0:x0 + tile] += weights
    return out / contributors


def expected_thin(latent: np.ndarray, fn, tile: int, overlap: int) -> np.ndarray:
    """Our rule for any size, float64: per-axis tile min(tile, L), separate Gaussians per axis."""
    _, _, h, w = latent.shape
    th, tw = min(tile, h), min(tile, w)

    def starts(length, t):
        if length <= tile:
            return [0]
        s = [0]
        while s[-1] + t < length:
            s.append(s[-1] + tile - overlap)
        s[-1] = length - t
        return s

    weights = gaussian_weights_release(tw, th).numpy()
    out, norm = None, np.zeros((h, w))
    for y0 in starts(h, th):
        for x0 in starts(w, tw):
            pred = fn(latent[:, :, y0:y0 + th, x0:x0 + tw])
            if out is None:
                out = np.zeros((latent.shape[0], pred.shape[1], h, w))
            out[:, :, y0:y0 + th, x0:x0 + tw] += pred * weights
            norm[y0:y0 + th, x0:x0 + tw] += weights
    return out / norm


def tile_dependent(x):
    """A per-sample, non-local map (depends on the whole tile), so the blend matters. Works on
    numpy arrays and torch tensors alike; returns 2 channels from the input's C."""
    mean = x.mean(axis=(1, 2, 3), keepdims=True) if isinstance(x, np.ndarray) else x.mean(dim=(1, 2, 3), keepdim=True)
    a = x[:, :1] * (1 + mean) + 0.5 * x[:, 1:2] ** 2
    b = x[:, 2:3] - 2 * mean
    return np.concatenate([a, b], axis=1) if isinstance(x, np.ndarray) else torch.cat([a, b], dim=1)


# ---------------------------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------------------------

def test_release_examples():
    assert tile_starts(96, 96, 32) == [0]
    assert tile_starts(100, 96, 32) == [0, 4]
    assert tile_starts(200, 96, 32) == [0, 64, 104]
    assert tile_starts(1, 96, 32) == [0]
    assert tile_starts(32, 96, 32) == [0]          # L == overlap: one (shrunk) tile, no endless loop
    assert tile_starts(17, 16, 8) == [0, 1]
    assert tile_starts(40, 16, 8) == [0, 8, 16, 24]


@pytest.mark.parametrize("tile,overlap", [(96, 32), (16, 8), (64, 0), (8, 7), (5, 2), (96, 95)])
def test_layout_matches_release_loop(tile, overlap):
    for length in range(tile, 3 * tile + 40):
        assert tile_starts(length, tile, overlap) == release_tile_offsets(length, tile, overlap), length
    for length in range(1, tile + 1):
        assert tile_starts(length, tile, overlap) == [0]


@pytest.mark.parametrize("length,tile,overlap", [(300, 96, 32), (97, 96, 32), (1000, 16, 8), (50, 7, 3)])
def test_layout_covers_and_respects_overlap(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    t = min(tile, length)
    assert starts[0] == 0 and starts[-1] + t == length
    assert all(b > a for a, b in itertools.pairwise(starts))
    assert all(a + t - b >= overlap for a, b in itertools.pairwise(starts))   # every seam has >= overlap
    # minimal count: one tile fewer would not reach the far edge
    assert (len(starts) - 2) * (tile - overlap) + tile < length


def test_grid_thin_and_tiny():
    th, tw, corners = latent_tile_grid(64, 160, 96, 32)
    assert (th, tw) == (64, 96) and corners == [(0, 0), (0, 64)]
    th, tw, corners = latent_tile_grid(200, 100, 96, 32)
    assert (th, tw) == (96, 96) and corners == [(y, x) for y in (0, 64, 104) for x in (0, 4)]
    assert latent_tile_grid(1, 1, 96, 32) == (1, 1, [(0, 0)])
    th, tw, corners = latent_tile_grid(1, 500, 96, 32)
    assert (th, tw) == (1, 96) and [c[1] for c in corners] == release_tile_offsets(500, 96, 32)


def test_needs_tiling_rule():
    assert not needs_latent_tiling(96, 96, 96)
    assert not needs_latent_tiling(64, 144, 96)        # area 9216 = 96^2: untiled even though w > tile
    assert needs_latent_tiling(97, 96, 96)
    assert needs_latent_tiling(64, 160, 96)


@pytest.mark.parametrize("tile,overlap", [(16, 16), (16, 20), (16, -1), (0, 0)])
def test_bad_overlap_is_a_clear_error(tile, overlap):
    with pytest.raises(PiSAError, match="overlap|tile"):
        tile_starts(100, tile, overlap)
    with pytest.raises(PiSAError):
        tiled_latent_map(torch.zeros(1, 4, 40, 40), lambda x: x, tile=tile, overlap=overlap)


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("th,tw", [(96, 96), (64, 96), (1, 1), (1, 7), (33, 2)])
def test_gaussian_weights_match_float64_formula(th, tw):
    got = gaussian_tile_weights(th, tw)
    assert got.dtype == torch.float32 and got.shape == (th, tw)
    ref = gaussian_weights_release(tw, th).numpy()
    ref = ref / ref.max() * got.max().item()      # the release's constant factor cancels in the blend
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-6, atol=0)
    assert got.min() > 0
    prof = np.array(gaussian_profile(th))
    np.testing.assert_allclose(prof, prof[::-1], rtol=1e-12)                # centred


# ---------------------------------------------------------------------------------------------
# tiled_latent_map
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("h,w", [(100, 100), (200, 120), (96, 97), (130, 250)])
def test_matches_release_stitching(h, w):
    """Where the release works (both sides >= tile) our result equals its float64 stitching."""
    latent = torch.randn(2, 4, h, w, generator=torch.Generator().manual_seed(h * w))
    got = tiled_latent_map(latent, tile_dependent, tile=96, overlap=32)
    ref = release_tiled(latent.double().numpy(), tile_dependent, 96, 32)
    assert got.dtype == torch.float32 and got.shape == (2, 2, h, w)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("h,w,tile,overlap", [(64, 160, 96, 32), (1, 9300, 96, 32), (32, 400, 96, 32),
                                              (40, 23, 16, 8), (5, 300, 16, 8), (3, 3, 2, 1)])
def test_thin_latents(h, w, tile, overlap):
    latent = torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(7))
    got = tiled_latent_map(latent, tile_dependent, tile=tile, overlap=overlap)
    ref = expected_thin(latent.double().numpy(), tile_dependent, tile, overlap)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("h,w", [(1, 1), (1, 5), (100, 100), (64, 160), (17, 200)])
def test_identity_like_map_returns_input(h, w):
    latent = torch.randn(2, 4, h, w, generator=torch.Generator().manual_seed(1))
    got = tiled_latent_map(latent, lambda x: x.clone(), tile=16, overlap=8)
    torch.testing.assert_close(got, latent, rtol=1e-6, atol=1e-6)


def test_local_map_equals_untiled():
    latent = torch.randn(1, 4, 70, 90, generator=torch.Generator().manual_seed(2))

    def local(x):     # per-pixel, conv-free, changes the channel count
        return torch.stack([torch.sin(3 * x[:, 0]) * x[:, 1], x[:, 2] ** 2 - x[:, 3]], dim=1)

    torch.testing.assert_close(tiled_latent_map(latent, local, tile=24, overlap=8), local(latent),
                               rtol=1e-5, atol=1e-6)


def test_untiled_calls_fn_once_on_whole_latent():
    latent = torch.randn(1, 4, 96, 96)
    calls, ticks = [], []
    out = tiled_latent_map(latent, lambda x: calls.append(x.shape) or x * 2, tile=96, overlap=32,
                           progress=lambda d, t: ticks.append((d, t)))
    assert calls == [latent.shape] and ticks == [(1, 1)]
    torch.testing.assert_close(out, latent * 2)


@pytest.mark.parametrize("max_batch", [2, 3, 4, 100])
def test_batched_tiles_equal_one_by_one(max_batch):
    latent = torch.randn(2, 4, 60, 75, generator=torch.Generator().manual_seed(3))
    sizes = []

    def fn(x):
        sizes.append(x.shape[0])
        return tile_dependent(x)

    one = tiled_latent_map(latent, tile_dependent, tile=24, overlap=8, max_batch=1)
    many = tiled_latent_map(latent, fn, tile=24, overlap=8, max_batch=max_batch)
    torch.testing.assert_close(many, one, rtol=1e-6, atol=1e-6)
    n_tiles = len(tile_starts(60, 24, 8)) * len(tile_starts(75, 24, 8))
    assert sum(sizes) == 2 * n_tiles
    assert all(s % 2 == 0 and s // 2 <= max_batch for s in sizes)
    assert len(sizes) == math.ceil(n_tiles / max_batch)


def test_progress_once_per_tile_and_cancel_propagates():
    latent = torch.randn(1, 4, 50, 50)
    ticks = []
    tiled_latent_map(latent, lambda x: x, tile=20, overlap=4, max_batch=3, progress=lambda d, t: ticks.append((d, t)))
    n = len(tile_starts(50, 20, 4)) ** 2
    assert ticks == [(i, n) for i in range(1, n + 1)]

    class Cancelled(Exception):
        pass

    calls = []

    def cancel(done, total):
        if done == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        tiled_latent_map(latent, lambda x: calls.append(1) or x, tile=20, overlap=4, progress=cancel)
    assert len(calls) == 2       # stopped promptly, no further tile computed


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.float32])
def test_output_is_float32(dtype):
    latent = torch.randn(1, 4, 40, 40)
    for size in (40, 16):   # untiled and tiled
        out = tiled_latent_map(latent, lambda x: x.to(dtype), tile=size, overlap=4)
        assert out.dtype == torch.float32


def test_wrong_fn_output_shape_is_a_clear_error():
    latent = torch.randn(1, 4, 40, 40)
    with pytest.raises(PiSAError, match="tile function"):
        tiled_latent_map(latent, lambda x: x[:, :, :-1], tile=16, overlap=4)
    with pytest.raises(PiSAError, match="4-D"):
        tiled_latent_map(torch.zeros(4, 40, 40), lambda x: x)


def test_no_host_synchronisation_in_the_loop():
    """No .item() / .tolist() / bool() / .cpu() on device tensors while accumulating."""
    from torch.overrides import TorchFunctionMode

    forbidden = {"item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy", "nonzero"}
    seen = []

    class Spy(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", "")
            if name in forbidden:
                seen.append(name)
            return func(*args, **(kwargs or {}))

    latent = torch.randn(1, 4, 50, 60)
    with Spy():
        tiled_latent_map(latent, lambda x: x * 2, tile=20, overlap=4, max_batch=2)
    assert seen == []
