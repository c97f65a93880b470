"""The semantic side branch of the adjustable mode (adapters.DualLoRAUNet): its in-place eager path
(branch only on the chunks that need it, B's product added by one addmm) equals the whole-batch
path autograd and torch.compile take, for Linear and conv layers in either memory format."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pisa_core.model.adapters import LowRankBranch
from pisa_core.model.lora import factor_shapes, lora_forward


def _branch(layer: nn.Module, rank: int = 3, seed: int = 0) -> LowRankBranch:
    g = torch.Generator().manual_seed(seed)
    a_shape, b_shape = factor_shapes(layer.weight.shape, rank)
    return LowRankBranch(layer, torch.randn(a_shape, generator=g), torch.randn(b_shape, generator=g), scale=0.5)


LAYERS = {
    "linear": (lambda: nn.Linear(6, 5), (2, 7, 6)),
    "conv3x3": (lambda: nn.Conv2d(6, 5, 3, padding=1), (2, 6, 9, 7)),
    "conv3x3-stride2": (lambda: nn.Conv2d(6, 5, 3, stride=2, padding=1), (2, 6, 9, 7)),
    "conv1x1": (lambda: nn.Conv2d(6, 5, 1), (2, 6, 4, 4)),
}


# "strided": an output whose channels are not its dense last dimension (B runs on its own)
CASES = [(kind, layout) for kind in LAYERS for layout in ("contiguous", "channels_last", "strided")
         if not (kind == "linear" and layout == "channels_last")]


@pytest.mark.parametrize("kind, layout", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_add_to_adds_the_branch_in_place(kind, layout, dtype):
    make, shape = LAYERS[kind]
    layer = make()
    branch = _branch(layer).to(dtype)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    with torch.no_grad():
        out = layer.to(dtype)(x)
    if layout == "channels_last":
        x, out = (t.contiguous(memory_format=torch.channels_last) for t in (x, out))
    elif layout == "strided":
        out = out.transpose(0, 1).contiguous().transpose(0, 1)
    x_before, expected = x.clone(), out.float() - 0.75 * lora_forward(x, branch.down, branch.up, branch.conv).float()
    storage = out.data_ptr()
    branch.add_to(out, x, -0.75)
    assert out.data_ptr() == storage and torch.equal(x, x_before)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 0.02, "atol": 0.05}
    torch.testing.assert_close(out.float(), expected, **tol)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("sem_off", [[True, False], [False, True], [True, True], [True, False, False]])
def test_eager_chunks_equal_the_whole_batch_path(pipe, channels_last, sem_off):
    """Eager inference (no_grad) takes the in-place path; with autograd on, the hook runs the
    branch on the whole batch out of place (the path torch.compile traces too)."""
    unet = pipe.unet
    g = torch.Generator().manual_seed(2)
    latents = torch.randn(len(sem_off) * 2, 4, 8, 6, generator=g)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    unet.to(memory_format=fmt)
    try:
        latents = latents.contiguous(memory_format=fmt)
        with torch.no_grad():
            eager = unet(latents, pipe.prompt_embeds, sem_off=sem_off)
            plain = unet(latents, pipe.prompt_embeds)
        with torch.enable_grad():
            whole = unet(latents, pipe.prompt_embeds, sem_off=sem_off)
    finally:
        unet.to(memory_format=torch.contiguous_format)
    torch.testing.assert_close(eager, whole.detach(), rtol=1e-5, atol=1e-5)
    n = len(sem_off)
    for eager_chunk, plain_chunk, off in zip(eager.chunk(n), plain.chunk(n), sem_off):
        # a chunk with the branch differs from the merged pass; one without is that pass
        assert torch.allclose(eager_chunk, plain_chunk, atol=1e-6) != off
