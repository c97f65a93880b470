"""Memory: how much a stage needs, the automatic VAE tile, the whole-latent attention's budget,
and out-of-memory recognition and back-off.

The working-memory figures are peak activation bytes per pixel and per byte of the compute dtype,
measured on the SD2.1-base VAE (CPU, fp32 and bf16, 256² to 768²: decode ~950, encode ~650) with
a 1.3x margin; the UNet figure is ComfyUI's estimate for an SD UNet with SDPA attention.
"""

from __future__ import annotations

import gc
import logging
import math

import torch

from ..errors import PiSAError
from ..options import LATENT_FACTOR
from . import hardware

log = logging.getLogger(__name__)

# Peak bytes per (pixel x dtype byte): VAE encode per input pixel, VAE decode per output pixel,
# UNet per latent pixel and batch sample.
BYTES_PER_PIXEL = {"encode": 850, "decode": 1250, "unet": 0.01 * 2**20}
MIN_VAE_TILE = 128  # below it the per-tile calls and the 1-pixel halos cost more than they save
# On a CPU too the untiled VAE is the fastest wherever it fits in the available RAM: the exact
# tiled one makes extra passes over every activation and recomputes the decoder's last upsampler,
# whatever the tile. Where it does not fit, CPU_VAE_TILE-pixel tiles (benchmarks/vae_tile_speed.py
# compares them with other tiles); with the free RAM unknown, untiled only up to
# CPU_UNKNOWN_RAM_UNTILED_PIXELS.
CPU_UNKNOWN_RAM_UNTILED_PIXELS = 1024 * 1024
CPU_VAE_TILE = 512
RESERVE_BYTES = 256 * 2**20        # left free for the allocator, the host and the output buffers' rounding
# Bytes per query-key score of an attention call on torch's plain (math) kernel: the scores and
# their softmax in float32 (recent torch computes half-precision inputs in float32 there), the
# softmax's all-masked-row check (a bool per score) and its select (another float32 copy): 13,
# rounded up. A fused kernel (flash, memory-efficient, cuDNN) never stores the scores.
MATH_BYTES_PER_SCORE = 16
# An attention call's budget where the free memory is unknown (CUDA, MPS and ComfyUI report it):
# the plain kernel's per-call copies of a 4096² image's keys and values take 1.5 GiB of it.
ATTENTION_BUDGET_UNKNOWN_FREE = 4 * 2**30

# Messages of allocation failures that arrive as a plain RuntimeError (older torch, MPS, cuBLAS,
# cuDNN, the CPU allocator).
OOM_MESSAGES = (
    "out of memory", "cublas_status_alloc_failed", "cudnn_status_alloc_failed",
    "cudnn_status_not_enough_workspace", "defaultcpuallocator: can't allocate memory",
    "defaultcpuallocator: not enough memory", "invalid buffer size",
)
OOM_TYPES = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                              getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)) if t is not None)


def is_oom(error: BaseException) -> bool:
    """Whether an exception is an allocation failure, on every torch version the project allows
    (torch.OutOfMemoryError only exists from 2.4) and every backend."""
    if isinstance(error, MemoryError) or (OOM_TYPES and isinstance(error, OOM_TYPES)):
        return True
    return isinstance(error, RuntimeError) and any(m in str(error).lower() for m in OOM_MESSAGES)


def release_cached_memory() -> None:
    """Return cached allocator blocks to the device (after the failed attempt's tensors are gone)."""
    gc.collect()
    for device_type in hardware.NUMBERED:
        if hardware.device_count(device_type):
            getattr(torch, device_type).empty_cache()
    if hardware.mps_available():
        torch.mps.empty_cache()


def with_backoff(run, tile: int, *, minimum: int, what: str, release=release_cached_memory):
    """run(tile), halving the tile after an out-of-memory error down to `minimum`; then one clear
    PiSAError. Memory is released outside the `except` block, when the traceback that pins the
    failed attempt's tensors has been dropped."""
    while True:
        try:
            return run(tile)
        except Exception as error:  # only allocation failures are handled; the rest propagates
            if not is_oom(error):
                raise
        release()
        if tile // 2 < minimum:
            raise PiSAError(f"Out of memory in the {what} even with a tile of {tile}; use a smaller image or "
                            "upscale factor, or free memory (close other models) and try again.")
        log.warning("pisa-sr: out of memory in the %s at tile %d; retrying with %d", what, tile, tile // 2)
        tile //= 2


def working_memory(stage: str, tile: int | None, size_hw, dtype: torch.dtype, batch: int = 1) -> int:
    """Peak activation bytes of one tile (at most `tile` a side of a `size_hw` input; None =
    untiled) of a stage. Sizes in image pixels for "encode" and "decode" (the decode's output), in
    latent pixels for "unet"."""
    if stage not in BYTES_PER_PIXEL:
        raise ValueError(f"unknown stage {stage!r}")
    h, w = (int(s) for s in size_hw)
    if tile is not None:
        h, w = min(tile, h), min(tile, w)
    return int(batch * h * w * dtype.itemsize * BYTES_PER_PIXEL[stage])


def auto_vae_tile(stage: str, size_hw, dtype: torch.dtype, free_bytes: int | None,
                  device_type: str = "cuda") -> int | None:
    """The VAE tile `vae_tile=0` (auto) means for an image of `size_hw` pixels (tiles keep the
    picture, so this is only about speed and memory): None (untiled) when the whole stage fits in
    `free_bytes`, else the largest multiple of 64 pixels that fits, at least MIN_VAE_TILE. Unknown
    free memory counts as enough. On a CPU ("cpu") the tiles are at most CPU_VAE_TILE, and with
    unknown free memory only images up to CPU_UNKNOWN_RAM_UNTILED_PIXELS run untiled."""
    h, w = (int(s) for s in size_hw)
    fits = _fitting_vae_tile(stage, h, w, dtype, free_bytes)
    if device_type != "cpu":
        return fits
    if fits is None and (free_bytes is not None or h * w <= CPU_UNKNOWN_RAM_UNTILED_PIXELS):
        return None
    return CPU_VAE_TILE if fits is None else min(fits, CPU_VAE_TILE)


def _fitting_vae_tile(stage: str, h: int, w: int, dtype: torch.dtype, free_bytes: int | None) -> int | None:
    # the float32 result buffer and the stage's input live beside the tile's activations
    buffers = h * w * 4 * (3 + 3 if stage == "decode" else 3 + 8 / LATENT_FACTOR**2)
    budget = None if free_bytes is None else free_bytes - RESERVE_BYTES - buffers
    if budget is None or working_memory(stage, None, (h, w), dtype) <= budget:
        return None
    per_px = dtype.itemsize * BYTES_PER_PIXEL[stage]
    side = int(math.sqrt(max(budget, 0) / per_px)) // 64 * 64
    return max(MIN_VAE_TILE, side)


def attention_bytes(queries: int, keys: int, *, rows: int, head_dim: int, itemsize: int, fused: bool) -> int:
    """Peak bytes one scaled-dot-product attention call allocates for `queries` query rows against
    `keys` keys, in `rows` = batch x heads independent attentions of `head_dim` channels (inputs
    excluded). Fused: its output (and a float32 log-sum-exp per query). Math: per query the
    MATH_BYTES_PER_SCORE scores, float32 copies of the query and of the output; per call float32
    copies of the keys (twice: cast and scaled) and the values."""
    if fused:
        return rows * queries * (head_dim * itemsize + 4)
    per_query = keys * MATH_BYTES_PER_SCORE + 2 * head_dim * 4 + head_dim * itemsize
    return rows * (queries * per_query + 3 * keys * head_dim * 4)


def attention_budget(free_bytes: int | None, resident_bytes: int) -> int:
    """Bytes one attention call may allocate: the free device memory less RESERVE_BYTES and the
    `resident_bytes` the attention holds throughout (its input, queries, keys, values, output);
    ATTENTION_BUDGET_UNKNOWN_FREE where the free memory is unknown."""
    if free_bytes is None:
        return ATTENTION_BUDGET_UNKNOWN_FREE
    return max(0, free_bytes - RESERVE_BYTES - resident_bytes)


def check_vae_tile(vae_tile: int) -> int:
    if not isinstance(vae_tile, int) or isinstance(vae_tile, bool) or (
            vae_tile != 0 and (vae_tile < MIN_VAE_TILE or vae_tile % LATENT_FACTOR)):
        raise PiSAError(f"vae_tile must be 0 (auto) or a multiple of {LATENT_FACTOR} of at least {MIN_VAE_TILE} "
                        f"image pixels; got {vae_tile!r}.")
    return vae_tile
