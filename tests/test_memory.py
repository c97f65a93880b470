"""Memory rules: out-of-memory recognised in every form, the tile back-off (memory freed once the
failed attempt is gone), the working-memory estimates and the automatic VAE tile."""

from __future__ import annotations

import weakref

import pytest
import torch

from pisa_core.errors import PiSAError
from pisa_core.inference.memory import MIN_VAE_TILE, auto_vae_tile, is_oom, with_backoff, working_memory

OOM_KINDS = {
    "torch.OutOfMemoryError": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    "older torch / ROCm": lambda: RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0)"),
    "MPS": lambda: RuntimeError("MPS backend out of memory (MPS allocated: 9.0 GB, other allocations: 1 GB)"),
    "cuBLAS": lambda: RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    "cuDNN": lambda: RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
    "cuDNN workspace": lambda: RuntimeError("cuDNN error: CUDNN_STATUS_NOT_ENOUGH_WORKSPACE"),
    "CPU allocator": lambda: RuntimeError("[enforce fail at alloc_cpu.cpp:118] . DefaultCPUAllocator: can't "
                                          "allocate memory: you tried to allocate 68719476736 bytes."),
    "MPS buffer": lambda: RuntimeError("Invalid buffer size: 74.00 GB"),
    "MemoryError": lambda: MemoryError(),
}


@pytest.mark.parametrize("kind", OOM_KINDS)
def test_every_kind_of_allocation_failure_halves_the_tile(kind):
    tiles, released = [], []
    attempts: list[weakref.ref] = []

    def run(tile):
        tiles.append(tile)
        if tile > 64:
            scratch = torch.empty(1024)  # the failed attempt's memory, alive only in its frame
            attempts.append(weakref.ref(scratch))
            raise OOM_KINDS[kind]()
        return tile

    def release():
        released.append(all(a() is None for a in attempts))  # the failed attempts' tensors are gone by now

    assert with_backoff(run, 256, minimum=32, what="test stage", release=release) == 64
    assert tiles == [256, 128, 64]
    assert released == [True, True]


def test_other_errors_propagate_unchanged():
    assert not is_oom(RuntimeError("Expected all tensors to be on the same device"))
    assert not is_oom(ValueError("out of memory"))  # only RuntimeError carries allocator messages

    def run(tile):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes"):
        with_backoff(run, 256, minimum=32, what="test stage", release=lambda: None)


def test_backoff_ends_in_one_clear_sentence():
    def run(tile):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(PiSAError) as info:
        with_backoff(run, 64, minimum=32, what="VAE decoder", release=lambda: None)
    message = str(info.value)
    assert "VAE decoder" in message and "tile of 32" in message and "\n" not in message


def test_working_memory_scales_with_tile_area_dtype_and_batch():
    decode_512 = working_memory("decode", 512, (600, 800), torch.float16)
    assert working_memory("decode", 1024, (1024, 1024), torch.float16) == 4 * decode_512
    assert working_memory("decode", 512, (512, 512), torch.float32) == 2 * decode_512
    assert working_memory("decode", 512, (256, 2000), torch.float16) == decode_512 // 2  # input below the tile
    assert working_memory("decode", None, (512, 512), torch.float16) == decode_512  # untiled
    unet = working_memory("unet", 96, (96, 96), torch.bfloat16)
    assert working_memory("unet", 96, (96, 96), torch.bfloat16, batch=2) == 2 * unet
    assert working_memory("encode", 512, (512, 512), torch.float16) < decode_512
    with pytest.raises(ValueError, match="unknown stage"):
        working_memory("upscale", 8, (8, 8), torch.float32)


def test_auto_tile_is_untiled_when_the_stage_fits_else_the_largest_tile_that_fits():
    size, dtype = (2048, 1536), torch.float16
    whole = working_memory("decode", None, size, dtype)
    assert auto_vae_tile("decode", size, dtype, None) is None  # unknown free memory: as the release, untiled
    assert auto_vae_tile("decode", size, dtype, 4 * whole) is None
    tight = auto_vae_tile("decode", size, dtype, whole // 3)
    assert tight is not None and tight % 64 == 0 and MIN_VAE_TILE <= tight < max(size)
    assert working_memory("decode", tight, size, dtype) <= whole // 3
    assert working_memory("decode", 2 * tight, size, dtype) > whole // 3  # not far from the largest
    assert auto_vae_tile("decode", size, dtype, 1) == MIN_VAE_TILE  # nothing free: the smallest tile
