"""Tiled processing: Gaussian-blended latent tiles (release parity). The VAE's tiles are exact
and live in vae_tiling.

Latent tiling reproduces the authors' release layout and weights wherever the release works
(docs/release.md, "Inference") and fixes its two defects: thin latents get rectangular tiles, and a non-positive stride is an error
instead of an endless loop.

Every tile's weight is separable (an outer product of a row profile and a column profile) and the
tiles form a product grid, so the sum of all weights is itself an outer product of the per-axis
sums. The blend therefore needs no weight buffer of the image's size, and the accumulation never
reads values back to the host.

Device placement: the source moves to the compute device once, before the first tile; tiles are
slices of it there, and the blended result is accumulated on that device, where the tile
function's outputs are.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import torch

from ..errors import PiSAError

Progress = Callable[[int, int], None] | None

# The release's Gaussian blending weights have variance 0.01 * size**2 (docs/release.md, "Inference").
GAUSSIAN_VARIANCE = 0.01


# ---------------------------------------------------------------------------------------------
# Layout
# ---------------------------------------------------------------------------------------------

def _check_tile_overlap(tile: int, overlap: int, what: str) -> None:
    if not isinstance(tile, numbers.Integral) or tile < 1:
        raise PiSAError(f"{what}: tile size must be a positive integer, found {tile!r}.")
    if not isinstance(overlap, numbers.Integral) or overlap < 0 or overlap >= tile:
        raise PiSAError(f"{what}: overlap must be an integer in [0, tile) = [0, {tile}), found {overlap!r}.")


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of the tiles along one axis of `length` (release layout).

    Tiles of size min(tile, length) start at i * (tile - overlap); tiles are added while the previous
    tile ends before `length`, i.e. n is the smallest count with (n - 1)(tile - overlap) + tile >= length,
    and the last tile is moved to end exactly at the far edge (start length - tile). An axis no longer
    than the tile has a single tile at 0.
    """
    _check_tile_overlap(tile, overlap, "tiling")
    if length < 1:
        raise PiSAError(f"tiling: the axis length must be at least 1, found {length}.")
    if length <= tile:
        return [0]
    stride = tile - overlap
    count = 1 + math.ceil((length - tile) / stride)
    starts = [i * stride for i in range(count)]
    starts[-1] = length - tile
    return starts


def latent_tile_grid(h: int, w: int, tile: int, overlap: int) -> tuple[int, int, list[tuple[int, int]]]:
    """Tile height, tile width and the (y0, x0) corners, row by row, for an h x w latent.

    Per axis the tile size is min(tile, axis length), so a latent thinner than the tile gets
    rectangular tiles (the release crashes there; it uses square tiles otherwise, which this equals).
    """
    tile_h, tile_w = min(tile, h), min(tile, w)
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    return tile_h, tile_w, [(y, x) for y in ys for x in xs]


def needs_latent_tiling(h: int, w: int, tile: int) -> bool:
    """Release rule: the latent is tiled only when its area h * w exceeds tile * tile."""
    return h * w > tile * tile


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------

def gaussian_profile(size: int) -> list[float]:
    """1-D Gaussian blend profile of the release, g(i) = exp(-(i - (size-1)/2)^2 / (2 * 0.01 * size^2))
    (docs/release.md, "Inference").

    Computed in Python floats (double precision); the release's constant factor 1/sqrt(2*pi*0.01)
    is left out because the blend divides by the weight sum.
    """
    mid = (size - 1) / 2
    return [math.exp(-((i - mid) ** 2) / (2 * GAUSSIAN_VARIANCE * size * size)) for i in range(size)]


def gaussian_tile_weights(tile_h: int, tile_w: int, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """[tile_h, tile_w] Gaussian weights outer(g_h, g_w) (docs/release.md), product taken in double
    precision on the host and rounded once to `dtype` (never float64 on the device)."""
    gy, gx = gaussian_profile(tile_h), gaussian_profile(tile_w)
    rows = [[a * b for b in gx] for a in gy]
    return torch.tensor(rows, dtype=dtype, device=device)


# ---------------------------------------------------------------------------------------------
# Blending engine
# ---------------------------------------------------------------------------------------------

def _axis_plan(starts: Sequence[int], size: int, scale_num: int, scale_den: int, profiles: Sequence[list[float]]):
    """Output-space (start, size) per tile plus the per-axis sum of the placed profiles."""
    out_size = size * scale_num // scale_den
    placed = [(s * scale_num // scale_den, out_size) for s in starts]
    total = max(s for s, _ in placed) + out_size
    norm = [0.0] * total
    for (s, n), prof in zip(placed, profiles):
        for k in range(n):
            norm[s + k] += prof[k]
    return placed, norm


def _blend(fn, source, ys, xs, th, tw, *, scale=(1, 1), row_profiles, col_profiles,
           max_batch: int, progress: Progress, what: str) -> torch.Tensor:
    """Run fn on every tile of `source` (tiles stacked along the batch dimension, up to max_batch
    at a time), place each output at its scaled position weighted by outer(row, col) profile, and
    divide by the (separable) weight sum. Output is float32 on the device of fn's outputs."""
    num, den = scale
    b = source.shape[0]
    rows, norm_y = _axis_plan(ys, th, num, den, row_profiles)
    cols, norm_x = _axis_plan(xs, tw, num, den, col_profiles)
    out_th, out_tw = rows[0][1], cols[0][1]
    tiles = [(i, j) for i in range(len(ys)) for j in range(len(xs))]
    total = len(tiles)
    out = None
    done = 0
    for first in range(0, total, max_batch):
        group = tiles[first:first + max_batch]
        batch = torch.cat([source[:, :, ys[i]:ys[i] + th, xs[j]:xs[j] + tw] for i, j in group], dim=0)
        pred = fn(batch)
        expected = (len(group) * b, out_th, out_tw)
        if not isinstance(pred, torch.Tensor) or pred.ndim != 4 or (pred.shape[0], *pred.shape[2:]) != expected:
            found = tuple(pred.shape) if isinstance(pred, torch.Tensor) else type(pred).__name__
            raise PiSAError(f"{what}: the tile function must return [{expected[0]}, C, {out_th}, {out_tw}] "
                            f"for an input of shape {tuple(batch.shape)}, found {found}.")
        if out is None:
            device = pred.device
            out = torch.zeros((b, pred.shape[1], len(norm_y), len(norm_x)), dtype=torch.float32, device=device)
            # small per-axis weight tables go to the device once
            prof_y = torch.tensor(row_profiles, dtype=torch.float32, device=device)
            prof_x = torch.tensor(col_profiles, dtype=torch.float32, device=device)
        for k, (i, j) in enumerate(group):
            y0, x0 = rows[i][0], cols[j][0]
            weight = prof_y[i][:, None] * prof_x[j][None, :]
            out[:, :, y0:y0 + out_th, x0:x0 + out_tw].addcmul_(pred[k * b:(k + 1) * b].float(), weight)
            done += 1
            if progress is not None:
                progress(done, total)
        del pred, batch
    out.div_(torch.tensor(norm_y, dtype=torch.float32, device=device)[:, None])
    out.div_(torch.tensor(norm_x, dtype=torch.float32, device=device)[None, :])
    return out


def _untiled(fn, source, progress: Progress, what: str) -> torch.Tensor:
    result = fn(source)
    if not isinstance(result, torch.Tensor) or result.ndim != 4 or result.shape[0] != source.shape[0]:
        found = tuple(result.shape) if isinstance(result, torch.Tensor) else type(result).__name__
        raise PiSAError(f"{what}: the function must return a 4-D tensor with batch {source.shape[0]}, found {found}.")
    if progress is not None:
        progress(1, 1)
    return result.float()


def _check_4d(tensor, what: str, name: str) -> None:
    if not isinstance(tensor, torch.Tensor) or tensor.ndim != 4:
        found = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise PiSAError(f"{what}: {name} must be a 4-D tensor [B, C, H, W], found {found}.")


def _check_max_batch(max_batch, what: str) -> None:
    if not isinstance(max_batch, numbers.Integral) or max_batch < 1:
        raise PiSAError(f"{what}: max_batch must be a positive integer, found {max_batch!r}.")


# ---------------------------------------------------------------------------------------------
# Latent tiling (release parity)
# ---------------------------------------------------------------------------------------------

def tiled_latent_map(latent: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], *, tile: int = 96,
                     overlap: int = 32, max_batch: int = 1, progress: Progress = None, device=None) -> torch.Tensor:
    """Apply `fn` to `latent` [B, C, H, W], in Gaussian-blended tiles when H * W > tile^2.

    fn receives tiles stacked along the batch dimension, tile-major ([n * B, C, th, tw], tile k in
    rows k*B..(k+1)*B-1, n <= max_batch) and must return [n * B, C', th, tw]. Each output tile is
    weighted by gaussian_tile_weights(th, tw) and the sum divided by the summed weights
    (docs/release.md, "Inference"). progress(done, total) is called after every tile (once with (1, 1) when untiled) and
    may raise to cancel. `device`: where fn computes; the latent moves there once. Returns float32
    [B, C', H, W] on fn's device.
    """
    what = "latent tiling"
    _check_4d(latent, what, "the latent")
    _check_tile_overlap(tile, overlap, what)
    _check_max_batch(max_batch, what)
    latent = latent if device is None else latent.to(device)
    h, w = latent.shape[-2:]
    if not needs_latent_tiling(h, w, tile):
        return _untiled(fn, latent, progress, what)
    th, tw, _ = latent_tile_grid(h, w, tile, overlap)
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    gy, gx = gaussian_profile(th), gaussian_profile(tw)
    return _blend(fn, latent, ys, xs, th, tw, row_profiles=[gy] * len(ys), col_profiles=[gx] * len(xs),
                  max_batch=max_batch, progress=progress, what=what)
