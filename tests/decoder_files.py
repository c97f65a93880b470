"""The fast decoder's published structure, built independently of pisa_core from diffusers' blocks
(not its `Decoder` class), and its checkpoint written in the published layout.

Facts of VOSR's `sd21_lwdecoder.pth` (arXiv 2604.03225): diffusers' Decoder structure with every
width halved, block_out_channels (64, 128, 256, 256), layers_per_block 2 (three resnets per up
block), upsamplers in all but the last up block, a mid block of two resnets around a single-head
self-attention; GroupNorm 32 groups, eps 1e-6; SiLU; no post-quantisation convolution. The file is
a torch.save dict {'config': {...}, 'model_state_dict': {...}} with diffusers' Decoder names.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.models.unets.unet_2d_blocks import UNetMidBlock2D, UpDecoderBlock2D
from tiny_models import _randomize_norms
from torch import nn

PUBLISHED_WIDTHS = (64, 128, 256, 256)
TINY_WIDTHS = (32, 32, 64, 64)  # the published structure at the narrowest width 32 GroupNorm groups allow
EPS, GROUPS = 1e-6, 32


class PublishedDecoder(nn.Module):
    """z (unscaled SD latent) -> image, as the published file's structure describes."""

    def __init__(self, widths=PUBLISHED_WIDTHS, layers_per_block: int = 2, latent_channels: int = 4,
                 out_channels: int = 3):
        super().__init__()
        top, levels = widths[-1], list(reversed(widths))
        self.conv_in = nn.Conv2d(latent_channels, top, 3, padding=1)
        self.mid_block = UNetMidBlock2D(in_channels=top, temb_channels=None, resnet_eps=EPS, resnet_act_fn="silu",
                                        resnet_groups=GROUPS, attention_head_dim=top, add_attention=True)
        self.up_blocks = nn.ModuleList(
            UpDecoderBlock2D(in_channels=levels[max(i - 1, 0)], out_channels=width, num_layers=layers_per_block + 1,
                             resnet_eps=EPS, resnet_act_fn="silu", resnet_groups=GROUPS,
                             add_upsample=i < len(levels) - 1, temb_channels=None)
            for i, width in enumerate(levels))
        self.conv_norm_out = nn.GroupNorm(GROUPS, widths[0], eps=EPS)
        self.conv_out = nn.Conv2d(widths[0], out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            h = block(h)
        return self.conv_out(F.silu(self.conv_norm_out(h)))


def published_decoder(widths=TINY_WIDTHS, seed: int = 0, device=None) -> PublishedDecoder:
    """Random weights (norms perturbed too, so a mapping mistake changes the output)."""
    torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        model = PublishedDecoder(widths)
    if model.conv_in.weight.device.type != "meta":
        _randomize_norms(model, seed)
    return model.eval().requires_grad_(False)


def published_config(widths=TINY_WIDTHS, layers_per_block: int = 2) -> dict:
    return {"in_channels": 4, "out_channels": 3, "block_out_channels": list(widths), "layers_per_block": layers_per_block}


def write_published(path: Path, model: PublishedDecoder, config: dict | None = None, **extra) -> Path:
    """torch.save of the published dict (config + model_state_dict), with `extra` entries beside."""
    widths = [model.up_blocks[-1 - i].resnets[0].conv2.out_channels for i in range(len(model.up_blocks))]
    data = {"config": config if config is not None else published_config(widths),
            "model_state_dict": model.state_dict(), **extra}
    torch.save(data, path)
    return path


def random_fast_decoder(widths=PUBLISHED_WIDTHS, seed: int = 0, device=None):
    """The published structure with random weights, read through pisa_core's checks (the benchmarks'
    real-size fast decoder; on device "meta" shapes only)."""
    from pisa_core.model.fast_decoder import build_decoder

    model = published_decoder(widths, seed, device)
    return build_decoder(model.state_dict(), published_config(widths), f"random {'x'.join(map(str, widths))} decoder")
