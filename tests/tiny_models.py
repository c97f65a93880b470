"""Tiny random-init components with the structure of Stable Diffusion 2.1-base.

Same classes and the same block layout as the real model (diffusers fast-test style), small
enough for CPU tests. Heads follow the SD2 rule the loader infers from shapes: 64-wide heads,
one head for blocks narrower than 64 channels.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

TEXT_WIDTH = 32
VOCAB_SIZE = 1000
UNET_CHANNELS = (32, 64)
VAE_CHANNELS = (32, 32, 64, 64)


def heads_for(channels) -> list[int]:
    return [max(1, c // 64) for c in channels]


def tiny_unet(seed: int = 0, cross_attention_dim: int = TEXT_WIDTH, **overrides) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    config = dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=UNET_CHANNELS,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=heads_for(UNET_CHANNELS),
        use_linear_projection=True,
        norm_num_groups=32,
    )
    config.update(overrides)
    unet = UNet2DConditionModel(**config)
    _randomize_norms(unet, seed)
    return unet.eval()


def tiny_vae(seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(VAE_CHANNELS),
        up_block_types=("UpDecoderBlock2D",) * len(VAE_CHANNELS),
        block_out_channels=VAE_CHANNELS,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=64,
        scaling_factor=0.18215,
    )
    _randomize_norms(vae, seed + 1)
    return vae.eval()


def tiny_text_encoder(seed: int = 0, hidden_act: str = "gelu") -> CLIPTextModel:
    torch.manual_seed(seed + 2)
    config = CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=TEXT_WIDTH,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=max(1, TEXT_WIDTH // 64),  # SD2: 64-wide heads (not stored in the weights)
        max_position_embeddings=77,
        hidden_act=hidden_act,
        projection_dim=TEXT_WIDTH,
        bos_token_id=VOCAB_SIZE - 2,
        eos_token_id=VOCAB_SIZE - 1,
        pad_token_id=0,
    )
    return CLIPTextModel(config).eval()


def _randomize_norms(model: torch.nn.Module, seed: int) -> None:
    """Random-init leaves norm weights at 1 and biases at 0; perturb them so that a
    key-mapping mistake in a loader changes the output."""
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and module.weight is not None:
                module.weight.add_(0.05 * torch.randn(module.weight.shape, generator=g))
                module.bias.add_(0.05 * torch.randn(module.bias.shape, generator=g))


def _byte_level_alphabet() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for raw bytes (GPT-2 / CLIP convention)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def write_tiny_tokenizer(folder: Path, vocab_size: int = VOCAB_SIZE) -> None:
    """A CLIP BPE tokenizer in the SD2 layout (pad "!" = 0, start/end of text = last two ids) with
    `vocab_size` entries (the real SD2.1 one has 49408)."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = _byte_level_alphabet()
    tokens = ["!"] + [c for c in chars if c != "!"] + [c + "</w>" for c in chars]
    tokens += [f"tok{i}</w>" for i in range(vocab_size - 2 - len(tokens))]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    assert len(tokens) == vocab_size
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "!", "unk_token": "<|endoftext|>"}))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"model_max_length": 77, "pad_token": "!", "bos_token": "<|startoftext|>",
         "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer"}))
