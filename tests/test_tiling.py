"""Latent tiling (release parity) and VAE tiling (feathered) on CPU."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from release_reference import gaussian_weights_release, release_tile_offsets
from tiny_models import tiny_vae

from pisa_core.errors import PiSAError
from pisa_core.tiling import (
    gaussian_profile,
    gaussian_tile_weights,
    latent_tile_grid,
    needs_latent_tiling,
    ramp_profile,
    tile_starts,
    tiled_latent_map,
    vae_decode_tiled,
    vae_encode_tiled,
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


def test_ramp_profile():
    assert ramp_profile(6, 0, 0) == [1.0] * 6
    r = ramp_profile(8, 4, 2)
    assert r[:4] == [0.125, 0.375, 0.625, 0.875] and r[4:6] == [1.0, 1.0] and r[6:] == [0.75, 0.25]
    # facing ramps of the same length sum to 1
    a, b = ramp_profile(10, 0, 4), ramp_profile(10, 4, 0)
    assert [x + y for x, y in zip(a[-4:], b[:4])] == [1.0] * 4


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
        vae_decode_tiled(lambda z: F.interpolate(z[:, :3], scale_factor=8), latent[..., :20, :30], tile=8, overlap=2)
    assert seen == []


# ---------------------------------------------------------------------------------------------
# VAE tiling: exact with local maps
# ---------------------------------------------------------------------------------------------

_MIX_ENC = torch.randn(4, 3, generator=torch.Generator().manual_seed(11))
_MIX_DEC = torch.randn(3, 4, generator=torch.Generator().manual_seed(12))


def local_encode(p):      # 8x8 average + per-pixel channel mix: the output pixel sees only its own block
    return torch.einsum("oc,bchw->bohw", _MIX_ENC, F.avg_pool2d(p, 8))


def local_decode(z):
    return torch.einsum("oc,bchw->bohw", _MIX_DEC, F.interpolate(z, scale_factor=8, mode="nearest"))


@pytest.mark.parametrize("h,w,tile,overlap", [(96, 160, 64, 16), (200, 56, 64, 24), (40, 304, 128, 64),
                                              (64, 64, 32, 8), (16, 1000, 256, 8)])
def test_vae_encode_tiled_local_exact(h, w, tile, overlap):
    pixels = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(h + w)) * 2 - 1
    ticks = []
    got = vae_encode_tiled(local_encode, pixels, tile=tile, overlap=overlap, progress=lambda d, t: ticks.append(d))
    torch.testing.assert_close(got, local_encode(pixels), rtol=1e-5, atol=1e-6)
    assert got.dtype == torch.float32
    assert ticks == list(range(1, len(tile_starts(h, tile, overlap)) * len(tile_starts(w, tile, overlap)) + 1))


@pytest.mark.parametrize("h,w,tile,overlap", [(12, 20, 8, 2), (25, 7, 8, 3), (5, 40, 16, 4), (30, 30, 10, 0)])
def test_vae_decode_tiled_local_exact(h, w, tile, overlap):
    latent = torch.randn(2, 4, h, w, generator=torch.Generator().manual_seed(h * w))
    got = vae_decode_tiled(local_decode, latent, tile=tile, overlap=overlap)
    torch.testing.assert_close(got, local_decode(latent), rtol=1e-5, atol=1e-5)
    assert got.shape == (2, 3, 8 * h, 8 * w) and got.dtype == torch.float32


def test_vae_encode_tiles_start_on_the_latent_grid():
    h, w = 136, 200
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pixels = torch.stack([ys, xs, xs * 0], dim=0)[None].float()
    corners = []

    def record(p):
        corners.append((int(p[0, 0, 0, 0]), int(p[0, 1, 0, 0]), p.shape[-2], p.shape[-1]))
        return local_encode(p)

    vae_encode_tiled(record, pixels, tile=64, overlap=24)
    assert all(y % 8 == 0 and x % 8 == 0 and th % 8 == 0 and tw % 8 == 0 for y, x, th, tw in corners)
    assert {c[:2] for c in corners} == {(y, x) for y in tile_starts(h, 64, 24) for x in tile_starts(w, 64, 24)}


def test_vae_small_inputs_untiled():
    pixels = torch.rand(1, 3, 48, 80)
    calls = []
    out = vae_encode_tiled(lambda p: calls.append(p.shape) or local_encode(p), pixels, tile=1024)
    assert calls == [pixels.shape] and out.shape == (1, 4, 6, 10)
    latent = torch.randn(1, 4, 6, 10)
    calls.clear()
    out = vae_decode_tiled(lambda z: calls.append(z.shape) or local_decode(z), latent)
    assert calls == [latent.shape] and out.shape == (1, 3, 48, 80)


def test_vae_tiling_errors():
    with pytest.raises(PiSAError, match="multiples of 8"):
        vae_encode_tiled(local_encode, torch.rand(1, 3, 64, 64), tile=60, overlap=8)
    with pytest.raises(PiSAError, match="multiples of 8"):
        vae_encode_tiled(local_encode, torch.rand(1, 3, 64, 64), tile=32, overlap=12)
    with pytest.raises(PiSAError, match="multiple of 8"):
        vae_encode_tiled(local_encode, torch.rand(1, 3, 64, 100), tile=32, overlap=8)
    with pytest.raises(PiSAError, match="overlap"):
        vae_decode_tiled(local_decode, torch.rand(1, 4, 64, 64), tile=16, overlap=16)


# ---------------------------------------------------------------------------------------------
# VAE tiling: seams
# ---------------------------------------------------------------------------------------------

def _pasted(fn, source, tile, overlap, num, den):
    """A deliberately naive tiling (each tile pasted over the previous one) that shows seams."""
    h, w = source.shape[-2:]
    th, tw, corners = latent_tile_grid(h, w, tile, overlap)
    out = None
    for y, x in corners:
        o = fn(source[..., y:y + th, x:x + tw])
        if out is None:
            out = torch.zeros(source.shape[0], o.shape[1], h * num // den, w * num // den)
        out[..., y * num // den:(y + th) * num // den, x * num // den:(x + tw) * num // den] = o
    return out


def _tile_edges(length, tile, overlap, num, den):
    """Indices b of the pixel pairs (b, b+1) that straddle a tile edge, in output units."""
    starts, t = tile_starts(length, tile, overlap), min(tile, length)
    edges = {s * num // den - 1 for s in starts if s > 0} | {(s + t) * num // den - 1 for s in starts if s + t < length}
    return sorted(edges)


def _seam_ratio(out, ref, edges_y, edges_x):
    """Gradient energy across tile edges relative to elsewhere, each measured against the untiled
    output at the same place (so the content's own structure cancels); ~1 means no seam."""
    ratios = []
    for dim, edges in ((-2, edges_y), (-1, edges_x)):
        if not edges:
            continue
        other = tuple(d for d in (0, 1, 2, 3) if d != dim % 4)
        grad = (out.diff(dim=dim).abs().mean(dim=other)) / (ref.diff(dim=dim).abs().mean(dim=other))
        rest = [i for i in range(grad.shape[0]) if i not in edges]
        ratios.append((grad[edges].mean() / grad[rest].mean()).item())
    return max(ratios)


def test_feathering_removes_per_tile_offsets():
    """Tiles that differ by a per-tile offset (what per-tile GroupNorm statistics do): the blend
    spreads the step over the overlap instead of leaving a jump at the tile edge."""
    h, w = 16, 40
    ramp = torch.linspace(0, 4, w).expand(1, 4, h, w).contiguous()

    def per_tile_offset(z):
        return F.interpolate(z[:, :3], scale_factor=8) - z.mean(dim=(2, 3), keepdim=True)[:, :3]

    untiled = per_tile_offset(ramp)
    ours = vae_decode_tiled(per_tile_offset, ramp, tile=16, overlap=8) - untiled
    naive = _pasted(per_tile_offset, ramp, 16, 8, 8, 1) - untiled
    step = naive.diff(dim=-1).abs().max()
    assert step > 0.5                                       # the tiles do disagree
    assert ours.diff(dim=-1).abs().max() < 0.05 * step      # spread over the 64-pixel ramp


@torch.no_grad()
def test_vae_decode_tiled_tiny_vae():
    vae = tiny_vae()

    def decode(z):
        return vae.decode(z).sample

    latent = torch.randn(1, 4, 16, 32, generator=torch.Generator().manual_seed(0))
    untiled = decode(latent)
    tiled = vae_decode_tiled(decode, latent, tile=16, overlap=6)     # 3 tiles across, starts 0, 10, 16
    assert tiled.shape == untiled.shape
    # Tolerance: tiles see their own GroupNorm statistics and attention context (no GroupNorm sync
    # by design); on this random tiny VAE that costs ~15-25% of the output's spread.
    assert (tiled - untiled).abs().mean() < 0.3 * untiled.std()
    edges_y, edges_x = _tile_edges(16, 16, 6, 8, 1), _tile_edges(32, 16, 6, 8, 1)
    ours = _seam_ratio(tiled, untiled, edges_y, edges_x)
    naive = _seam_ratio(_pasted(decode, latent, 16, 6, 8, 1), untiled, edges_y, edges_x)
    assert ours < 1.1
    assert naive > ours + 0.1          # the measure does see seams when there are some
    # a single tile is exactly the untiled call
    torch.testing.assert_close(vae_decode_tiled(decode, latent, tile=32), untiled)


@torch.no_grad()
def test_vae_encode_tiled_tiny_vae():
    vae = tiny_vae()

    def encode(p):
        return vae.encode(p).latent_dist.mean

    pixels = torch.rand(1, 3, 192, 320, generator=torch.Generator().manual_seed(0)) * 2 - 1
    untiled = encode(pixels)
    tiled = vae_encode_tiled(encode, pixels, tile=128, overlap=32)
    assert tiled.shape == untiled.shape == (1, 4, 24, 40)
    assert (tiled - untiled).abs().mean() < 0.3 * untiled.std()
    assert _seam_ratio(tiled, untiled, _tile_edges(192, 128, 32, 1, 8), _tile_edges(320, 128, 32, 1, 8)) < 1.1
