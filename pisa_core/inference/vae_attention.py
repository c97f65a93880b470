"""The VAE mid-block's self-attention over the whole latent, its queries in chunks that fit the
device's free memory (and on a CPU a Cancel's latency).

The attention spans the whole latent (that is what a tile cannot see). For N = H/8 · W/8 positions
its cost is 4 · N² · C floating-point operations (C = 512 channels in SD's VAE: about 141 TFLOP at
a 4096² image), and where the device's attention kernel is the plain formula (torch's math
kernel) it stores an N x N score matrix per head: 262,144² scores at 4096², far beyond any GPU.
Each query's softmax runs over all keys, so computing the queries in chunks gives the same values
(the same scaled_dot_product_attention per query row); plan() sizes the chunks:

- the kernel: hardware.Probe.fused_attention, whether torch runs a fused kernel (flash,
  memory-efficient, cuDNN, the CPU's flash) that never stores the scores, or the math kernel;
- the memory: each call within memory.attention_budget of the free device memory, counted by
  memory.attention_bytes; one call for all queries where that fits;
- on a CPU also at most CHUNK_SCORES scores a chunk, so progress and a cancel point come every
  few seconds there (on a GPU the whole 4096² attention takes about a second).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import hardware, memory

log = logging.getLogger(__name__)

CHUNK_SCORES = 2**28  # query x key scores per chunk on a CPU: about 0.5 TFLOP at 512 channels, seconds


@dataclass(frozen=True)
class AttentionPlan:
    """How self_attention computes one attention over `positions` positions of `batch` samples:
    with the "fused" or the "math" kernel, `queries` queries a call in `chunks` calls, each
    allocating about `chunk_bytes` within a budget of `budget_bytes`."""
    batch: int
    positions: int
    kernel: str
    queries: int
    chunks: int
    chunk_bytes: int
    budget_bytes: int

    def describe(self) -> str:
        return (f"{self.kernel} kernel, {self.chunks} chunk(s) of {self.queries} queries over {self.positions} "
                f"positions, {self.chunk_bytes / 2**20:.0f} MiB each (budget {self.budget_bytes / 2**20:.0f} MiB)")


def heads_and_width(attn: nn.Module) -> tuple[int, int]:
    """(heads, channels per head) of `attn`."""
    return attn.heads, attn.to_k.out_features // attn.heads


def resident_bytes(attn: nn.Module, batch: int, positions: int, dtype: torch.dtype) -> int:
    """Bytes self_attention holds while its chunks run: the input (the residual), the queries,
    keys and values, and the output."""
    heads, head_dim = heads_and_width(attn)
    return batch * positions * dtype.itemsize * (attn.to_q.in_features + 4 * heads * head_dim)


def plan(attn: nn.Module, batch: int, positions: int, device, dtype: torch.dtype, free_bytes: int | None,
         probe: hardware.Probe | None = None) -> AttentionPlan:
    """The chunks self_attention computes `attn` over `positions` positions of `batch` samples in,
    computing in `dtype` on `device` with `free_bytes` free there (None: unknown) before the
    attention's input exists: the most queries a call whose memory.attention_bytes fit the
    memory.attention_budget (all of them where they fit), on a CPU at most CHUNK_SCORES scores."""
    device = torch.device(device)
    heads, head_dim = heads_and_width(attn)
    fused = (probe or hardware.Probe()).fused_attention(device, dtype, heads, head_dim)
    rows, n = batch * heads, max(positions, 1)

    def need(queries: int) -> int:
        return memory.attention_bytes(queries, n, rows=rows, head_dim=head_dim, itemsize=dtype.itemsize, fused=fused)

    budget = memory.attention_budget(free_bytes, resident_bytes(attn, batch, n, dtype))
    queries = n if need(n) <= budget else max(1, (budget - need(0)) // (need(1) - need(0)))
    if device.type == "cpu":
        queries = min(queries, max(1, CHUNK_SCORES // n))
    return AttentionPlan(batch, positions, "fused" if fused else "math", queries, math.ceil(n / queries), need(queries),
                budget)


def supported(attn: nn.Module) -> bool:
    """Whether `attn` is the plain spatial self-attention self_attention reproduces (the SD VAE's:
    optional GroupNorm, q/k/v projections, one output projection, residual and rescale)."""
    return all(getattr(attn, name, None) is None for name in ("spatial_norm", "norm_q", "norm_k")) and all(
        hasattr(attn, name) for name in ("to_q", "to_k", "to_v", "to_out", "heads", "group_norm"))


def self_attention(attn: nn.Module, x: torch.Tensor, on_chunk: Callable[[], None] | None = None,
                   chunks: AttentionPlan | None = None) -> torch.Tensor:
    """attn(x) for x [B, C, H, W], the computation of diffusers' AttnProcessor2_0 step by step,
    with the queries in the chunks of `chunks` (default: plan() with the free memory x's device
    reports now) and on_chunk() after each (it may raise to cancel)."""
    b, c, h, w = x.shape
    if chunks is None or (chunks.batch, chunks.positions) != (b, h * w):
        chunks = plan(attn, b, h * w, x.device, x.dtype, hardware.free_memory(x.device))
    log.debug("pisa-sr: VAE attention on %s: %s", x.device, chunks.describe())
    residual = x
    tokens = x.view(b, c, h * w).transpose(1, 2)
    if attn.group_norm is not None:
        tokens = attn.group_norm(tokens.transpose(1, 2)).transpose(1, 2)
    query, key, value = attn.to_q(tokens), attn.to_k(tokens), attn.to_v(tokens)
    del tokens
    heads, head_dim = heads_and_width(attn)

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.view(b, -1, heads, head_dim).transpose(1, 2)

    query, key, value = split(query), split(key), split(value)
    if chunks.chunks == 1:
        out = F.scaled_dot_product_attention(query, key, value)
        if on_chunk is not None:
            on_chunk()
    else:  # written in place: the output once, not its chunks and their concatenation
        out = torch.empty_like(query)
        for start in range(0, h * w, chunks.queries):
            stop = start + chunks.queries
            out[:, :, start:stop] = F.scaled_dot_product_attention(query[:, :, start:stop], key, value)
            if on_chunk is not None:
                on_chunk()
    del query, key, value
    out = out.transpose(1, 2).reshape(b, -1, heads * head_dim).to(x.dtype)
    out = attn.to_out[1](attn.to_out[0](out))
    out = out.transpose(-1, -2).reshape(b, c, h, w)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


class ChunkedProcessor:
    """A diffusers attention processor running self_attention (self-attention on 4-D input only)
    with the chunks of `chunks` (planned for its input's size; others are planned when called)."""

    def __init__(self, on_chunk: Callable[[], None] | None, chunks: AttentionPlan | None = None):
        self.on_chunk, self.chunks = on_chunk, chunks

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        if encoder_hidden_states is not None or attention_mask is not None or hidden_states.ndim != 4:
            raise ValueError("ChunkedProcessor computes the VAE's spatial self-attention only")
        return self_attention(attn, hidden_states, self.on_chunk, self.chunks)


def mid_attentions(vae: nn.Module, part: str) -> list[nn.Module]:
    """The supported attentions of the VAE's `part` ("encoder"/"decoder") mid-block."""
    mid = getattr(vae, part).mid_block
    return [a for a in getattr(mid, "attentions", []) if a is not None and supported(a)]


@contextlib.contextmanager
def chunked(attentions: Iterable[nn.Module], on_chunk: Callable[[], None] | None,
            plans: Sequence[AttentionPlan | None] | None = None):
    """The attentions compute in chunks (`plans`, one per attention; on_chunk after each chunk)
    while inside; their own processors are back on leaving, also after an error or a cancel."""
    attentions = list(attentions)
    plans = list(plans) if plans is not None else [None] * len(attentions)
    saved = [a.processor for a in attentions]
    try:
        for a, chunks in zip(attentions, plans, strict=True):
            a.processor = ChunkedProcessor(on_chunk, chunks)  # not set_processor: it logs and may drop hooks
        yield
    finally:
        for a, processor in zip(attentions, saved):
            a.processor = processor
