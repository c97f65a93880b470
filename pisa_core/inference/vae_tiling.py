"""Exact tiled VAE: the picture of the untiled VAE, with device memory bounded by the tile.

The SD VAE's encoder and decoder are walked as a sequence of their own modules (real weights,
nothing re-implemented but the GroupNorm's normalisation), one operation at a time over the whole
image, streaming tiles through the compute device:

- Every full-size activation lives in HOST memory (CPU RAM; on a CPU that is the same RAM). The
  device holds one tile of an operation's input (plus a halo of the convolution's reach, read from
  the stored neighbour values, so the result is exact) and its output.
- Every GroupNorm uses the statistics of the whole image: each operation accumulates per-channel
  moments of the tiles it writes (mean and squared deviations, merged pairwise in float64), and
  the next GroupNorm folds them into its groups. Normalisation, SiLU and the following
  convolution then run per tile with those statistics.
- Resnets: out = x + conv2(SiLU(GN2(conv1(SiLU(GN1(x)))))); the first pass stores conv1's output
  h, the second writes the sum over x in place, or over h (row by row, keeping the lines the next
  row reads) when the channels change: two full tensors of a level at a time.
- The last upsampler's output (nearest x2 then its 3x3 conv; 256 channels at full resolution, the
  decoder's largest tensor) is never stored: the resnet after it recomputes it per tile from the
  half-resolution tensor (in a statistics pass, with halos in its first pass, and for the
  residual in its second: two more convs of that size).
- The mid-block's self-attention spans the whole latent, so it runs on the whole latent on the
  device (its queries in chunks that fit the device's free memory, vae_attention); its resnets are
  tiled like the others.

Device memory: one operation's tile (see docs/tiling.md for the formula) and, for the attention,
the whole latent at 512 channels and one chunk of its queries. Host memory: two full activations
of one level (and the half-resolution input of the decoder's last upsampler beside them).

A dry run on the `meta` device (shape-only, no data) counts the tiles first, so progress(done,
total) is called after every tile of every pass with a fixed total; it may raise to cancel.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from diffusers.models.downsampling import Downsample2D
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.upsampling import Upsample2D
from torch import nn

from ..errors import PiSAError
from . import vae_attention
from .hardware import Probe

Progress = Callable[[int, int], None] | None
META = torch.device("meta")


# ---------------------------------------------------------------------------------------------
# Whole-image statistics
# ---------------------------------------------------------------------------------------------

def merge_moments(n_a: int, mean_a: torch.Tensor, m2_a: torch.Tensor, n_b: int, mean_b: torch.Tensor,
                  m2_b: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
    """Count, mean and sum of squared deviations of two sample sets from theirs (Chan, Golub and
    LeVeque 1979, pairwise update): stable where sum/sum-of-squares cancels."""
    n = n_a + n_b
    delta = mean_b - mean_a
    return n, mean_a + delta * (n_b / n), m2_a + m2_b + delta * delta * (n_a * n_b / n)


def group_moments(n: int, mean: torch.Tensor, m2: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group mean and (biased) variance [B, G] from per-channel moments [B, C] of n samples each:
    the groups are runs of C/G channels, as in torch's GroupNorm (Wu and He 2018, Eq. 1-3)."""
    b, c = mean.shape
    mean_c, m2_c = mean.reshape(b, groups, c // groups), m2.reshape(b, groups, c // groups)
    mean_g = mean_c.mean(dim=2)
    m2_g = m2_c.sum(dim=2) + n * ((mean_c - mean_g[..., None]) ** 2).sum(dim=2)
    return mean_g, m2_g / (n * (c // groups))


def tile_moments(tile: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and sum of squared deviations [B, C] (float64, host) of a [B, C, h, w] tile.
    On a CPU through batch_norm's statistics kernel (float accumulation in one pass over the
    half-precision tile, several times faster than var_mean of a float copy; its error, about 1e-4
    of the variance, is that of the untiled GroupNorm's own float accumulation); else var_mean."""
    b, c, h, w = tile.shape
    n = h * w
    if tile.device.type != "cpu" or n < 2:
        var, mean = torch.var_mean(tile.float(), dim=(2, 3), correction=0)
        return mean.cpu().double(), var.cpu().double() * n
    means, m2s = [], []
    for sample in tile.split(1):
        mean, var = torch.zeros(c), torch.ones(c)  # updated with momentum 1: the sample's mean, unbiased variance
        torch.batch_norm_update_stats(sample, mean, var, 1.0)
        means.append(mean.double())
        m2s.append(var.double() * (n - 1))
    return torch.stack(means), torch.stack(m2s)


class ChannelStats:
    """Per-channel moments of a [B, C, H, W] tensor, accumulated from its tiles (float32 per tile,
    tile_moments; merged in float64 on the host). A meta tile (a dry run) only counts."""

    def __init__(self):
        self.n = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None
        self.shape: tuple[int, int] | None = None

    def add(self, tile: torch.Tensor) -> None:
        self.shape = (tile.shape[0], tile.shape[1])
        if tile.is_meta:
            return
        n_b = tile.shape[2] * tile.shape[3]
        mean, m2 = tile_moments(tile)
        if self.mean is None:
            self.n, self.mean, self.m2 = n_b, mean, m2
        else:
            self.n, self.mean, self.m2 = merge_moments(self.n, self.mean, self.m2, n_b, mean, m2)

    def normaliser(self, norm: nn.GroupNorm, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (scale, shift) [B, C, 1, 1] float32 on `device` such that x * scale + shift
        is `norm`(x) with these whole-image statistics."""
        b, c = self.shape
        if self.mean is None:  # a dry run: shapes only
            mean, rstd = torch.zeros(b, c), torch.ones(b, c)
        else:
            mean_g, var_g = group_moments(self.n, self.mean, self.m2, norm.num_groups)
            per = c // norm.num_groups
            mean = mean_g.repeat_interleave(per, dim=1).float()
            rstd = (var_g + norm.eps).rsqrt().repeat_interleave(per, dim=1).float()
        mean, rstd = mean.to(device), rstd.to(device)
        scale = rstd if norm.weight is None else rstd * norm.weight.to(device).float()
        shift = -mean * scale if norm.bias is None else norm.bias.to(device).float() - mean * scale
        return scale[..., None, None], shift[..., None, None]


# ---------------------------------------------------------------------------------------------
# Sources: full-size tensors a pass reads regions of
# ---------------------------------------------------------------------------------------------

@dataclass
class _Run:
    """One tiled stage: where tiles compute, where full tensors live, the tile side in full-image
    pixels, and the tile counter that reports progress."""
    device: torch.device
    host: torch.device
    dtype: torch.dtype
    layout: torch.memory_format
    tile: int
    full: tuple[int, int]
    progress: Progress = None
    total: int = 0
    done: int = field(default=0)
    compute: torch.device | None = None  # the device the attention's chunks are planned for (a dry run: the real one)
    free_bytes: int | None = None  # free memory there when the stage began (vae_attention.plan)
    probe: Probe | None = None

    def tiles(self, size) -> Iterator[tuple[int, int, int, int]]:
        """Non-overlapping tiles (y0, y1, x0, x1) of a tensor of `size`, the tile side scaled to its
        resolution; counts each tile after its work."""
        h, w = size
        th, tw = max(1, self.tile * h // self.full[0]), max(1, self.tile * w // self.full[1])
        for y in range(0, h, th):
            for x in range(0, w, tw):
                yield y, min(y + th, h), x, min(x + tw, w)
                self.tick()

    def tick(self) -> None:
        """One tile's (or one attention chunk's) work done: progress, and a cancel point."""
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, self.total)

    def on_device(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.device, self.dtype).contiguous(memory_format=self.layout)

    def empty(self, batch: int, channels: int, size) -> torch.Tensor:
        return torch.empty((batch, channels, *size), dtype=self.dtype, device=self.host, memory_format=self.layout)


def _store(dst: torch.Tensor, y0: int, y1: int, x0: int, x1: int, tile: torch.Tensor) -> None:
    """Write a device tile into a host tensor; a meta tile (shape-only) has no values to write."""
    if not tile.is_meta or dst.is_meta:
        dst[..., y0:y1, x0:x1].copy_(tile)


@dataclass
class Stored:
    """A full tensor in host memory, with the per-channel moments of its values when known."""
    tensor: torch.Tensor
    stats: ChannelStats | None = None

    @property
    def batch(self) -> int:
        return self.tensor.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.tensor.shape[-2:])

    def region(self, run: _Run, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        return run.on_device(self.tensor[..., y0:y1, x0:x1])


@dataclass
class Upsampled:
    """An Upsample2D's output (nearest x2, then its convolution) of a stored tensor, computed per
    region on demand instead of stored."""
    low: Stored
    up: Upsample2D
    stats: ChannelStats | None = None

    @property
    def batch(self) -> int:
        return self.low.batch

    @property
    def size(self) -> tuple[int, int]:
        return tuple(2 * s for s in self.low.size)

    def region(self, run: _Run, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        conv = self.up.conv
        (ay, by), (ax, bx) = _reach(conv, y0, y1, 0), _reach(conv, x0, x1, 1)

        def upsampled(r: _Run, cy0, cy1, cx0, cx1):  # rows/columns [c0, c1) of the x2 nearest upsampling
            low = self.low.region(r, cy0 // 2, (cy1 + 1) // 2, cx0 // 2, (cx1 + 1) // 2)
            big = F.interpolate(low, scale_factor=2.0, mode="nearest")
            return big[..., cy0 - cy0 // 2 * 2:cy1 - cy0 // 2 * 2, cx0 - cx0 // 2 * 2:cx1 - cx0 // 2 * 2]

        _raw, window = _window(run, upsampled, self.size, ay, by, ax, bx)
        return _conv(conv, window)


def _reach(conv: nn.Conv2d, o0: int, o1: int, axis: int, before: int | None = None) -> tuple[int, int]:
    """Input range [a, b) that outputs [o0, o1) of `conv` read along `axis` (before: zero padding
    ahead of the input; default the conv's own)."""
    k, s = conv.kernel_size[axis], conv.stride[axis]
    p = conv.padding[axis] if before is None else before
    return o0 * s - p, (o1 - 1) * s - p + k


def _out_len(conv: nn.Conv2d, n: int, axis: int, before: int, after: int) -> int:
    return (n + before + after - conv.kernel_size[axis]) // conv.stride[axis] + 1


def _window(run: _Run, read, size, ay: int, by: int, ax: int, bx: int, pre=None):
    """(raw, window): raw = the source's values in [ay, by) x [ax, bx) clipped to the image, and
    window = pre(raw) zero-padded to the whole range (a convolution's zero padding comes after
    its normalisation and activation)."""
    h, w = size
    cy0, cy1, cx0, cx1 = max(ay, 0), min(by, h), max(ax, 0), min(bx, w)
    raw = read(run, cy0, cy1, cx0, cx1)
    window = raw if pre is None else pre(raw)
    pad = (cx0 - ax, bx - cx1, cy0 - ay, by - cy1)
    if any(pad):
        window = F.pad(window, pad)
    return raw, window.contiguous(memory_format=run.layout)


def _conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """`conv` on an already padded window (the module's weights; moved only in a dry run)."""
    weight = conv.weight.to(x.device)
    bias = None if conv.bias is None else conv.bias.to(x.device)
    return F.conv2d(x, weight, bias, conv.stride, 0, conv.dilation, conv.groups)


def _norm_act(run: _Run, norm: nn.GroupNorm, stats: ChannelStats):
    """SiLU(GroupNorm(x)) per tile with the whole image's statistics, rounded to the compute dtype
    before the SiLU as the untiled module's output is."""
    scale, shift = stats.normaliser(norm, run.device)

    def apply(x: torch.Tensor) -> torch.Tensor:
        return F.silu(scale_shift(x, scale, shift).to(run.dtype), inplace=True)

    return apply


def scale_shift(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """x * scale + shift computed in float32 (scale, shift: float32 [B, C, 1, 1]) and rounded once to
    the caller's dtype. On a CPU through batch_norm's inference kernel (one pass, no float copy of
    x; mean 0, variance 1 and eps 0 make it exactly x * weight + bias; result in x's dtype), else
    addcmul (result float32)."""
    if x.device.type != "cpu":
        return torch.addcmul(shift, x.float(), scale)
    zeros, ones = torch.zeros(x.shape[1]), torch.ones(x.shape[1])
    parts = [F.batch_norm(sample, zeros, ones, sc.flatten(), sh.flatten(), False, 0.0, 0.0)
             for sample, sc, sh in zip(x.split(1), scale.split(1), shift.split(1))]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _stats(run: _Run, source) -> ChannelStats:
    """The source's per-channel moments: known from the pass that wrote it, else one pass over it."""
    if source.stats is None:
        source.stats = ChannelStats()
        for y0, y1, x0, x1 in run.tiles(source.size):
            source.stats.add(source.region(run, y0, y1, x0, x1))
    return source.stats


# ---------------------------------------------------------------------------------------------
# Operations: each reads a source and returns a Stored (or a recomputed Upsampled)
# ---------------------------------------------------------------------------------------------

def _conv_pass(run: _Run, source, *, conv: nn.Conv2d, norm: nn.GroupNorm | None = None,
               pads: tuple[int, int] | None = None) -> Stored:
    """One convolution over the image in tiles, after SiLU(GroupNorm) when `norm` is given;
    pads = (before, after) zero padding (default the conv's own, symmetric)."""
    pre = None if norm is None else _norm_act(run, norm, _stats(run, source))
    before, after = pads if pads is not None else (None, None)
    size = tuple(_out_len(conv, n, axis, conv.padding[axis] if before is None else before,
                          conv.padding[axis] if after is None else after)
                 for axis, n in enumerate(source.size))
    out, stats = run.empty(source.batch, conv.out_channels, size), ChannelStats()
    for y0, y1, x0, x1 in run.tiles(size):
        (ay, by), (ax, bx) = _reach(conv, y0, y1, 0, before), _reach(conv, x0, x1, 1, before)
        tile = _conv(conv, _window(run, source.region, source.size, ay, by, ax, bx, pre)[1])
        stats.add(tile)
        _store(out, y0, y1, x0, x1, tile)
    return Stored(out, stats)


def _downsample(run: _Run, source, *, down: Downsample2D) -> Stored:
    """Downsample2D: diffusers pads (0, 1, 0, 1) with zeros before its stride-2 conv when the
    conv itself has no padding."""
    pads = (0, 1) if down.padding == 0 else None
    return _conv_pass(run, source, conv=down.conv, pads=pads)


def _upsample(run: _Run, source, *, up: Upsample2D):
    """Upsample2D's output: stored below full resolution; at full resolution (the decoder's
    largest tensor) recomputed per tile by its consumer instead (one more conv pass, less memory)."""
    lazy = Upsampled(_materialise(run, source), up)
    return lazy if lazy.size == tuple(run.full) else _materialise(run, lazy)


def _materialise(run: _Run, source) -> Stored:
    if isinstance(source, Stored):
        return source
    out = run.empty(source.batch, source.up.conv.out_channels, source.size)
    stats = ChannelStats()
    for y0, y1, x0, x1 in run.tiles(source.size):
        tile = source.region(run, y0, y1, x0, x1)
        stats.add(tile)
        _store(out, y0, y1, x0, x1, tile)
    return Stored(out, stats)


def _resnet(run: _Run, source, *, block: ResnetBlock2D) -> Stored:
    """out = (shortcut(x) + conv2(SiLU(GN2(conv1(SiLU(GN1(x))))))) / output_scale_factor in two
    tiled passes. The first stores conv1's output h; the second writes out over x in place when
    the shortcut is the identity on a stored x, else over h (then x is read only for its tile)."""
    pre1 = _norm_act(run, block.norm1, _stats(run, source))
    conv1, conv2, shortcut = block.conv1, block.conv2, block.conv_shortcut
    size = source.size
    hidden, hidden_stats = run.empty(source.batch, conv1.out_channels, size), ChannelStats()
    for y0, y1, x0, x1 in run.tiles(size):
        (ay, by), (ax, bx) = _reach(conv1, y0, y1, 0), _reach(conv1, x0, x1, 1)
        tile = _conv(conv1, _window(run, source.region, size, ay, by, ax, bx, pre1)[1])
        hidden_stats.add(tile)
        _store(hidden, y0, y1, x0, x1, tile)
    hidden = Stored(hidden, hidden_stats)
    pre2 = _norm_act(run, block.norm2, hidden_stats)

    def finish(tile, y0, y1, x0, x1):  # add the residual, scale, count
        residual = source.region(run, y0, y1, x0, x1)
        tile = tile.add_(residual if shortcut is None else _conv(shortcut, residual))
        if block.output_scale_factor != 1:
            tile = tile.div_(block.output_scale_factor)
        stats.add(tile)
        return tile

    stats = ChannelStats()
    if shortcut is None and isinstance(source, Stored):
        for y0, y1, x0, x1 in run.tiles(size):
            (ay, by), (ax, bx) = _reach(conv2, y0, y1, 0), _reach(conv2, x0, x1, 1)
            tile = _conv(conv2, _window(run, hidden.region, size, ay, by, ax, bx, pre2)[1])
            _store(source.tensor, y0, y1, x0, x1, finish(tile, y0, y1, x0, x1))
        return Stored(source.tensor, stats)
    _conv_over_input(run, hidden, conv2, pre2, finish)
    return Stored(hidden.tensor, stats)


def _conv_over_input(run: _Run, source: Stored, conv: nn.Conv2d, pre, finish) -> None:
    """finish(conv(pre(source)) tile) written over `source` itself (same shape): a row of tiles is
    held until the row is done (its neighbours read the original values across the tile edges),
    and the lines the next row reads above itself are kept before the row is written."""
    size, reach = source.size, conv.padding[0]
    above, pending = None, []
    for y0, y1, x0, x1 in run.tiles(size):
        def read(r, cy0, cy1, cx0, cx1, y0=y0, above=above):
            if cy0 >= y0:
                return source.region(r, cy0, cy1, cx0, cx1)
            kept = r.on_device(above[..., cy0 - y0 + reach:, cx0:cx1])  # lines above this row, as they were
            return torch.cat([kept, source.region(r, y0, cy1, cx0, cx1)], dim=2)

        (ay, by), (ax, bx) = _reach(conv, y0, y1, 0), _reach(conv, x0, x1, 1)
        tile = finish(_conv(conv, _window(run, read, size, ay, by, ax, bx, pre)[1]), y0, y1, x0, x1)
        pending.append((y0, y1, x0, x1, tile if tile.is_meta else tile.to(run.host)))
        if x1 == size[1]:  # the row is complete
            above = source.tensor[..., max(y1 - reach, 0):y1, :].clone()
            for py0, py1, px0, px1, done in pending:
                _store(source.tensor, py0, py1, px0, px1, done)
            pending = []


def _attention(run: _Run, source, *, attn: nn.Module) -> Stored:
    """The mid-block's self-attention on the whole latent on the device (it spans all of it), its
    queries in the chunks vae_attention.plan sizes to the free memory, with progress and a cancel
    point after each."""
    whole = _materialise(run, source)
    chunks = vae_attention.plan(attn, whole.batch, whole.size[0] * whole.size[1], run.compute or run.device,
                                run.dtype, run.free_bytes, run.probe)
    x = run.on_device(whole.tensor)
    if run.host == META:  # a dry run only needs the shape and the count of chunks
        out = x
        for _chunk in range(chunks.chunks):
            run.tick()
    else:
        out = vae_attention.self_attention(attn, x, run.tick, chunks)
    result = run.empty(whole.batch, out.shape[1], whole.size)
    stats = ChannelStats()
    stats.add(out)
    _store(result, 0, whole.size[0], 0, whole.size[1], out)
    return Stored(result, stats)


# ---------------------------------------------------------------------------------------------
# The VAE as a sequence of operations
# ---------------------------------------------------------------------------------------------

def _mid_ops(mid: nn.Module) -> list:
    ops = [partial(_resnet, block=mid.resnets[0])]
    for attn, block in zip(mid.attentions, mid.resnets[1:]):
        if attn is not None:
            ops.append(partial(_attention, attn=attn))
        ops.append(partial(_resnet, block=block))
    return ops


def encoder_ops(vae: nn.Module) -> list:
    """AutoencoderKL's encoder and quant_conv, in the order of Encoder.forward."""
    enc = vae.encoder
    ops = [partial(_conv_pass, conv=enc.conv_in)]
    for block in enc.down_blocks:
        ops += [partial(_resnet, block=r) for r in block.resnets]
        ops += [partial(_downsample, down=d) for d in (block.downsamplers or [])]
    ops += _mid_ops(enc.mid_block)
    ops.append(partial(_conv_pass, norm=enc.conv_norm_out, conv=enc.conv_out))
    if getattr(vae, "quant_conv", None) is not None:
        ops.append(partial(_conv_pass, conv=vae.quant_conv))
    return ops


def decoder_ops(vae: nn.Module) -> list:
    """AutoencoderKL's post_quant_conv and decoder, in the order of Decoder.forward."""
    dec = vae.decoder
    ops = []
    if getattr(vae, "post_quant_conv", None) is not None:
        ops.append(partial(_conv_pass, conv=vae.post_quant_conv))
    ops.append(partial(_conv_pass, conv=dec.conv_in))
    ops += _mid_ops(dec.mid_block)
    for block in dec.up_blocks:
        ops += [partial(_resnet, block=r) for r in block.resnets]
        ops += [partial(_upsample, up=u) for u in (block.upsamplers or [])]
    ops.append(partial(_conv_pass, norm=dec.conv_norm_out, conv=dec.conv_out))
    return ops


def _check_supported(vae: nn.Module, part: str) -> None:
    """The modules this walk reproduces exactly; anything else is a clear error, not a wrong picture."""
    for name, module in getattr(vae, part).named_modules():
        bad = None
        if isinstance(module, ResnetBlock2D):
            if (module.upsample is not None or module.downsample is not None or module.time_emb_proj is not None
                    or not isinstance(module.nonlinearity, nn.SiLU) or not isinstance(module.norm1, nn.GroupNorm)
                    or (module.conv_shortcut is not None and tuple(module.conv_shortcut.kernel_size) != (1, 1))
                    or module.conv2.stride != (1, 1) or module.conv2.kernel_size != (3, 3)
                    or module.conv2.padding != (1, 1)):
                bad = "a resnet with resampling, a time embedding, another activation or norm"
        elif isinstance(module, Upsample2D):
            if (module.use_conv_transpose or not module.use_conv or module.norm is not None or not module.interpolate
                    or module.name != "conv"):
                bad = "an upsampler other than nearest x2 + conv"
        elif isinstance(module, Downsample2D):
            if not module.use_conv or module.norm is not None:
                bad = "a downsampler other than a strided conv"
        elif isinstance(module, nn.Conv2d) and (module.padding_mode != "zeros" or module.dilation != (1, 1)):
            bad = "a convolution with non-zero padding or dilation"
        if bad is not None:
            raise PiSAError(f"The exact tiled VAE does not support this VAE's {part}.{name}: {bad}; use vae_tile 0 "
                            "with enough memory for the untiled VAE.")
    for attn in getattr(getattr(vae, part).mid_block, "attentions", []):
        if attn is not None and not vae_attention.supported(attn):
            raise PiSAError(f"The exact tiled VAE does not support this VAE's {part} mid-block attention (a "
                            "spatial norm or q/k norms); use vae_tile 0 with enough memory for the untiled VAE.")
    if not isinstance(getattr(vae, part).conv_norm_out, nn.GroupNorm):
        raise PiSAError(f"The exact tiled VAE needs a GroupNorm as the VAE's {part}.conv_norm_out.")


def _walk(ops: list, source: Stored, run: _Run) -> torch.Tensor:
    held = [source]
    del source
    for op in ops:
        held.append(op(run, held.pop()))  # the op holds the only reference: it can free its input early
    return _materialise(run, held.pop()).tensor


def run_tiled(vae: nn.Module, part: str, x: torch.Tensor, *, tile: int, full: tuple[int, int], device,
              layout=torch.contiguous_format, progress: Progress = None, free_bytes: int | None = None,
              probe: Probe | None = None) -> torch.Tensor:
    """The VAE's `part` ("encoder": pixels [B,3,H,W] -> moments [B,8,H/8,W/8]; "decoder": unscaled
    latent -> pixels) in exact tiles of `tile` full-image pixels a side (`full`: the image size),
    computing on `device`, where `free_bytes` are free (None: unknown; it sizes the attention's
    query chunks, vae_attention.plan, with `probe`'s answers). Returns float32 on `device`."""
    _check_supported(vae, part)
    ops = encoder_ops(vae) if part == "encoder" else decoder_ops(vae)
    dtype = next(vae.parameters()).dtype
    device = torch.device(device)
    planning = {"compute": device, "free_bytes": free_bytes, "probe": probe}
    dry = _Run(META, META, dtype, layout, tile, full, **planning)
    _walk(ops, Stored(torch.empty(x.shape, dtype=x.dtype, device=META)), dry)
    run = _Run(device, torch.device("cpu"), dtype, layout, tile, full, progress, total=dry.done, **planning)
    host = torch.zeros(x.shape, dtype=x.dtype) if x.is_meta else x.detach().cpu()  # a dry run's input has no values
    return _walk(ops, Stored(host), run).to(device).float()


@contextlib.contextmanager
def block_progress(modules: list[nn.Module], progress: Progress, attentions: list[nn.Module],
                   plans: list[vae_attention.AttentionPlan]):
    """While inside, `attentions` compute in the query chunks of `plans` (one each, vae_attention)
    and, with `progress`, progress(done, total) is called after each of `modules` runs (vae_blocks
    of an untiled VAE) and after each chunk: a Cancel can answer between blocks and inside the
    attention. Removes its hooks on leaving."""
    if progress is None:
        with vae_attention.chunked(attentions, None, plans):
            yield
        return
    total = len(modules) + sum(p.chunks for p in plans)
    done = [0]

    def tick(*_hook_args):
        done[0] += 1
        progress(min(done[0], total), total)

    handles = [m.register_forward_hook(tick) for m in modules]
    try:
        with vae_attention.chunked(attentions, tick, plans):
            yield
    finally:
        for handle in handles:
            handle.remove()


def vae_blocks(vae: nn.Module, part: str) -> list[nn.Module]:
    """The modules of the VAE's `part` after which block_progress reports, in forward order: the
    input convolution, every resnet and resampler, the output convolution (each at most two 3x3
    convolutions of one level; the mid-block attention reports its own chunks)."""
    coder = getattr(vae, part)
    blocks = [*coder.down_blocks, coder.mid_block] if part == "encoder" else [coder.mid_block, *coder.up_blocks]
    modules = [coder.conv_in]
    for block in blocks:
        modules += list(block.resnets)
        modules += list(getattr(block, "downsamplers", None) or []) + list(getattr(block, "upsamplers", None) or [])
    return modules + [coder.conv_out]
