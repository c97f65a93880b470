"""The VAE mid-block's self-attention with its queries in chunks, so that a Cancel answers within
one chunk's work.

The attention spans the whole latent (that is what a tile cannot see), and its cost grows with the
square of the latent's size: N = H/8 · W/8 positions cost 4 · N² · 512 floating-point operations,
about 141 TFLOP at a 4096² image, minutes of one uninterruptible operation on a CPU. Each query's
softmax runs over all keys, so computing the queries in chunks gives the same values (the same
scaled_dot_product_attention per query row) with a progress and cancel point after every chunk.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

CHUNK_SCORES = 2**28  # query x key scores per chunk on a CPU: about 0.5 TFLOP at 512 channels, seconds


def query_chunk(positions: int, device: torch.device, chunk_scores: int | None = None) -> int:
    """Queries per chunk for a self-attention over `positions` keys computing on `device`: on a
    CPU chunks of about chunk_scores (default CHUNK_SCORES) scores; on a GPU all queries at once
    (there the whole 4096² attention takes about a second, and small chunks would leave most of
    the GPU idle)."""
    if torch.device(device).type != "cpu":
        return max(positions, 1)
    return max(1, (chunk_scores or CHUNK_SCORES) // max(positions, 1))


def chunk_count(positions: int, device: torch.device, chunk_scores: int | None = None) -> int:
    return math.ceil(positions / query_chunk(positions, device, chunk_scores))


def supported(attn: nn.Module) -> bool:
    """Whether `attn` is the plain spatial self-attention self_attention reproduces (the SD VAE's:
    optional GroupNorm, q/k/v projections, one output projection, residual and rescale)."""
    return all(getattr(attn, name, None) is None for name in ("spatial_norm", "norm_q", "norm_k")) and all(
        hasattr(attn, name) for name in ("to_q", "to_k", "to_v", "to_out", "heads", "group_norm"))


def self_attention(attn: nn.Module, x: torch.Tensor, on_chunk: Callable[[], None] | None = None,
                   chunk_scores: int | None = None) -> torch.Tensor:
    """attn(x) for x [B, C, H, W], the computation of diffusers' AttnProcessor2_0 step by step,
    with the queries in chunks of query_chunk(H·W, x.device) and on_chunk() after each (it may
    raise to cancel)."""
    b, c, h, w = x.shape
    residual = x
    tokens = x.view(b, c, h * w).transpose(1, 2)
    if attn.group_norm is not None:
        tokens = attn.group_norm(tokens.transpose(1, 2)).transpose(1, 2)
    query, key, value = attn.to_q(tokens), attn.to_k(tokens), attn.to_v(tokens)
    head_dim = key.shape[-1] // attn.heads

    def heads(t: torch.Tensor) -> torch.Tensor:
        return t.view(b, -1, attn.heads, head_dim).transpose(1, 2)

    query, key, value = heads(query), heads(key), heads(value)
    step = query_chunk(h * w, x.device, chunk_scores)
    parts = []
    for start in range(0, h * w, step):
        parts.append(F.scaled_dot_product_attention(query[:, :, start:start + step], key, value))
        if on_chunk is not None:
            on_chunk()
    out = torch.cat(parts, dim=2) if len(parts) > 1 else parts[0]
    out = out.transpose(1, 2).reshape(b, -1, attn.heads * head_dim).to(query.dtype)
    out = attn.to_out[1](attn.to_out[0](out))
    out = out.transpose(-1, -2).reshape(b, c, h, w)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


class ChunkedProcessor:
    """A diffusers attention processor running self_attention (self-attention on 4-D input only)."""

    def __init__(self, on_chunk: Callable[[], None] | None):
        self.on_chunk = on_chunk

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        if encoder_hidden_states is not None or attention_mask is not None or hidden_states.ndim != 4:
            raise ValueError("ChunkedProcessor computes the VAE's spatial self-attention only")
        return self_attention(attn, hidden_states, self.on_chunk)


def mid_attentions(vae: nn.Module, part: str) -> list[nn.Module]:
    """The supported attentions of the VAE's `part` ("encoder"/"decoder") mid-block."""
    mid = getattr(vae, part).mid_block
    return [a for a in getattr(mid, "attentions", []) if a is not None and supported(a)]


@contextlib.contextmanager
def chunked(attentions: Iterable[nn.Module], on_chunk: Callable[[], None] | None):
    """The attentions compute in chunks (on_chunk after each) while inside; their own processors
    are back on leaving, also after an error or a cancel."""
    attentions = list(attentions)
    saved = [a.processor for a in attentions]
    try:
        for a in attentions:
            a.processor = ChunkedProcessor(on_chunk)  # not set_processor: it logs and may drop hooks
        yield
    finally:
        for a, processor in zip(attentions, saved):
            a.processor = processor
