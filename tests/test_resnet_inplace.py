"""The in-place inference forward of diffusers' ResnetBlock2D (resnet_inplace): bit-identical to
diffusers' own forward on the UNet and the VAE in both memory formats and in fp32 and bf16, the
block's input untouched, diffusers' forward kept wherever autograd is on or the block is of
another kind, and the pipeline using it."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers.models.resnet import ResnetBlock2D
from tiny_models import tiny_unet, tiny_vae
from torch import nn

from pisa_core.model.resnet_inplace import (
    InplaceResnetBlock2D,
    _same_sum_in_place,
    supports_inplace,
    use_inplace_resnets,
)


def _resnets(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, ResnetBlock2D)]


def _both(model: nn.Module, dtype, channels_last: bool):
    model = model.to(dtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    fast = copy.deepcopy(model)
    assert use_inplace_resnets(fast) == len(_resnets(fast)) > 0
    assert all(type(m) is InplaceResnetBlock2D for m in _resnets(fast))
    return model, fast


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_unet_and_vae_outputs_are_bit_identical(dtype, channels_last):
    g = torch.Generator().manual_seed(0)
    unet, fast_unet = _both(tiny_unet(), dtype, channels_last)
    latent = torch.randn(2, 4, 16, 16, generator=g).to(dtype)
    text = torch.randn(2, 77, 32, generator=g).to(dtype)
    vae, fast_vae = _both(tiny_vae(), dtype, channels_last)
    pixels = torch.rand(1, 3, 64, 64, generator=g).to(dtype) * 2 - 1
    with torch.no_grad():
        assert torch.equal(fast_unet(latent, 999, text).sample, unet(latent, 999, text).sample)
        assert torch.equal(fast_vae.encode(pixels).latent_dist.mean, vae.encode(pixels).latent_dist.mean)
        z = torch.randn(1, 4, 8, 8, generator=g).to(dtype)
        assert torch.equal(fast_vae.decode(z).sample, vae.decode(z).sample)


def test_the_block_input_is_left_as_it_was():
    block = _resnets(tiny_vae())[0]
    use_inplace_resnets(block)
    x = torch.randn(1, block.in_channels, 8, 8)
    kept = x.clone()
    with torch.no_grad():
        block(x, None)
    assert torch.equal(x, kept)


def test_with_autograd_on_it_takes_diffusers_forward_and_gradients_flow():
    unet = tiny_unet()
    fast = copy.deepcopy(unet)
    use_inplace_resnets(fast)
    latent = torch.randn(1, 4, 16, 16, requires_grad=True)
    text = torch.randn(1, 77, 32)
    out = fast(latent, 999, text).sample
    assert torch.equal(out, unet(latent, 999, text).sample)
    out.square().mean().backward()
    assert latent.grad is not None and torch.isfinite(latent.grad).all()
    assert all(p.grad is not None for p in _resnets(fast)[0].parameters())


def test_other_kinds_of_block_keep_diffusers_forward():
    kinds = {
        "upsampling": ResnetBlock2D(in_channels=32, out_channels=32, temb_channels=None, up=True),
        "scale-shift": ResnetBlock2D(in_channels=32, out_channels=32, temb_channels=8,
                                     time_embedding_norm="scale_shift"),
        "mish": ResnetBlock2D(in_channels=32, out_channels=32, temb_channels=None, non_linearity="mish"),
    }
    holder = nn.ModuleDict(kinds)
    assert not any(supports_inplace(b) for b in kinds.values())
    assert use_inplace_resnets(holder) == 0
    assert all(type(b) is ResnetBlock2D for b in kinds.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_output_scale_a_time_embedding_and_mixed_layouts(dtype):
    """output_scale_factor ≠ 1 is divided in place; a [B,C,1,1] time embedding is added; an NCHW
    input to a channels-last block (its shortcut then has other strides than the convolution's
    output) gives diffusers' layout and values."""
    block = ResnetBlock2D(in_channels=32, out_channels=32, temb_channels=8, output_scale_factor=2.0).eval().to(dtype)
    block = block.to(memory_format=torch.channels_last)
    fast = copy.deepcopy(block)
    use_inplace_resnets(fast)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 32, 8, 8, generator=g).to(dtype)
    temb = torch.randn(2, 8, generator=g).to(dtype)
    with torch.no_grad():
        for given in (x, x.contiguous(memory_format=torch.channels_last)):
            expected, got = block(given, temb), fast(given, temb)
            assert torch.equal(got, expected)
            assert got.stride() == expected.stride()


def test_in_place_only_where_the_sum_is_the_same():
    h = torch.randn(2, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    assert _same_sum_in_place(h, torch.randn(2, 4, 1, 1))
    assert _same_sum_in_place(h, torch.randn(2, 4, 3, 3).contiguous(memory_format=torch.channels_last))
    assert not _same_sum_in_place(h, torch.randn(2, 4, 3, 3))  # other strides
    assert not _same_sum_in_place(h.bfloat16(), torch.randn(2, 4, 1, 1))  # the sum would be float32
    assert not _same_sum_in_place(h[:1], torch.randn(2, 4, 3, 3))  # the sum would be larger


def test_the_pipeline_uses_it(pipe):
    assert any(type(m) is InplaceResnetBlock2D for m in pipe.unet.modules())
    assert any(type(m) is InplaceResnetBlock2D for m in pipe.vae.modules())
