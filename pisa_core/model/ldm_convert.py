"""Single-file Stable Diffusion 2.x checkpoints (original LDM key layout) -> diffusers.

A single-file checkpoint (e.g. ``v2-1_512-ema-pruned.safetensors``) holds three components
under three key prefixes:

- ``model.diffusion_model.*``  the UNet (LDM ``openaimodel`` names),
- ``first_stage_model.*``      the VAE (LDM ``autoencoder`` names),
- ``cond_stage_model.model.*`` the OpenCLIP-H text tower.

This module renames those keys to the diffusers / transformers names
(``UNet2DConditionModel``, ``AutoencoderKL``, ``CLIPTextModel``) and infers each component's
config from tensor SHAPES, starting from the shipped SD2.1-base configs (``configs/*.json``) as
templates, so that any SD2-structured model (the real one or a tiny test one) loads through the
same code. What shapes cannot tell is taken from the template and documented where it is used:
the number of attention heads (SD2 uses 64-wide heads), GroupNorm groups (32), activations,
epsilon values and the VAE scaling factor.

Why not diffusers' own single-file loading: it needs a config that matches the file (it cannot
infer a smaller SD2-structured model's sizes) and materialises the whole checkpoint before it
converts. Inferring the config from shapes and renaming keys only (tensors stay unread) lets the
loader stream each tensor into its dtype with the LoRAs merged (see base_model), which keeps the
peak memory at the converted model's size. `tests/test_base_model.py` checks the renaming against
diffusers' own converter.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from ..errors import PiSAError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.model."

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"  # pisa_core/configs: package data

# Keys of the stored OpenCLIP text tower that the SD2 text encoder does not use.
UNUSED_TEXT_KEYS = ("text_projection", "logit_scale", "attn_mask")

HEAD_WIDTH = 64  # SD2's attention heads are 64 channels wide (not stored in the weights)


def load_template(name: str) -> dict:
    """The shipped SD2.1-base diffusers config ``configs/<name>.json`` as a fresh dict."""
    return json.loads((CONFIG_DIR / f"{name}.json").read_text())


def heads_for_width(width: int) -> int:
    """SD2 rule for the head count of an attention layer of ``width`` channels: 64-wide heads,
    at least one head (so a 32-wide tiny model has one head). The head count is not stored in
    the weights, so this rule is an assumption shared by the UNet and the text encoder."""
    return max(1, width // HEAD_WIDTH)


def split_components(state_dict: dict) -> tuple[dict, dict, dict]:
    """Split a single-file state dict into (unet, vae, text) dicts with the prefixes removed.
    Keys outside the three prefixes (EMA copies, noise-schedule buffers, ...) are ignored."""
    parts: tuple[dict, dict, dict] = ({}, {}, {})
    for key, tensor in state_dict.items():
        for part, prefix in zip(parts, (UNET_PREFIX, VAE_PREFIX, TEXT_PREFIX)):
            if key.startswith(prefix):
                part[key[len(prefix):]] = tensor
                break
    return parts


def dims(state: dict, key: str, ndim: int, component: str, source) -> tuple[int, ...]:
    """The shape of a tensor the conversion reads, which must exist with `ndim` dimensions: a
    PiSAError naming the key otherwise (a damaged or foreign file)."""
    tensor = state.get(key)
    if tensor is None:
        raise PiSAError(f"{source}: the {component} has no '{key}' tensor; the file is incomplete or not a "
                        "Stable Diffusion 2.x checkpoint.")
    if tensor.ndim != ndim:
        raise PiSAError(f"{source}: the {component} tensor '{key}' has shape {tuple(tensor.shape)}; a Stable "
                        f"Diffusion 2.x checkpoint has {ndim} dimensions there.")
    return tuple(int(n) for n in tensor.shape)


def _indices(keys, pattern: str) -> list[int]:
    """Sorted distinct integers captured by ``pattern`` (a regex with one group) in ``keys``."""
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := regex.match(k))})


def _rename(state_dict: dict, prefix_map: list[tuple[str, str, dict]], component: str, source: str) -> dict:
    """Rename keys by module prefix. ``prefix_map`` holds (old prefix, new prefix, suffix renames);
    the longest matching prefix wins. A key no prefix claims is an error: it means the file has a
    structure this converter does not understand."""
    ordered = sorted(prefix_map, key=lambda item: len(item[0]), reverse=True)
    out = {}
    for key, tensor in state_dict.items():
        for old, new, suffixes in ordered:
            if key.startswith(old + "."):
                rest = key[len(old) + 1:]
                for s_old, s_new in suffixes.items():
                    if rest.startswith(s_old + "."):
                        rest = s_new + rest[len(s_old):]
                        break
                out[f"{new}.{rest}"] = tensor
                break
        else:
            raise PiSAError(f"{source}: unexpected {component} key '{key}' for a Stable Diffusion 2.x checkpoint.")
    return out


# --------------------------------------------------------------------------------------- UNet

# LDM ResBlock sub-layers -> diffusers ResnetBlock2D names.
UNET_RESNET_RENAMES = {
    "in_layers.0": "norm1",
    "in_layers.2": "conv1",
    "emb_layers.1": "time_emb_proj",
    "out_layers.0": "norm2",
    "out_layers.3": "conv2",
    "skip_connection": "conv_shortcut",
}


def unet_levels(unet: dict, source: str = "checkpoint") -> tuple[list[list[int]], list[int]]:
    """The down path of an LDM UNet: for each resolution level the ``input_blocks`` indices of its
    ResBlocks, and the indices of the downsamplers between levels (``input_blocks.k.0.op``).
    Block 0 is ``conv_in``."""
    levels: list[list[int]] = [[]]
    downsamplers = []
    for k in _indices(unet, r"input_blocks\.(\d+)\."):
        if k == 0:
            continue
        if f"input_blocks.{k}.0.op.weight" in unet:
            downsamplers.append(k)
            levels.append([])
        else:
            levels[-1].append(k)
    if not levels[0] or any(len(level) != len(levels[0]) for level in levels):
        raise PiSAError(f"{source}: the UNet has an unsupported layout (ResBlocks per level {[len(v) for v in levels]}).")
    return levels, downsamplers


def _has_attention(unet: dict, block: str) -> bool:
    return f"{block}.1.proj_in.weight" in unet


def _transformer_depth(unet: dict, block: str) -> int:
    return len(_indices(unet, re.escape(block) + r"\.1\.transformer_blocks\.(\d+)\."))


def infer_unet_config(unet: dict, source: str = "checkpoint") -> dict:
    """UNet2DConditionModel config from LDM tensor shapes, on top of the SD2.1-base template.

    Inferred: in/out channels (conv_in / out.2), block_out_channels (each level's ResBlock
    width), layers_per_block (ResBlocks per down level), which levels have cross-attention
    (CrossAttn*Block2D vs Down/UpBlock2D), transformer layers per block, cross_attention_dim
    (attn2.to_k input width), use_linear_projection (proj_in weight is 2-D).
    Not in the weights: head count, taken as ``heads_for_width`` per level (SD2: 64-wide heads;
    diffusers calls this list ``attention_head_dim``), norm groups/eps and activations (template).
    """
    levels, _ = unet_levels(unet, source)
    lpb = len(levels[0])
    channels = [dims(unet, f"input_blocks.{level[0]}.0.out_layers.3.weight", 4, "UNet", source)[0] for level in levels]
    down_attn = [_has_attention(unet, f"input_blocks.{level[0]}") for level in levels]
    n_levels = len(levels)
    up_attn = [_has_attention(unet, f"output_blocks.{j * (lpb + 1)}") for j in range(n_levels)]
    attn_blocks = [f"input_blocks.{level[0]}" for level, a in zip(levels, down_attn) if a]
    if not attn_blocks or not _has_attention(unet, "middle_block"):
        raise PiSAError(f"{source}: the UNet has no cross-attention blocks where Stable Diffusion 2.x has them.")
    proj_in = unet[f"{attn_blocks[0]}.1.proj_in.weight"]
    to_k = dims(unet, f"{attn_blocks[0]}.1.transformer_blocks.0.attn2.to_k.weight", 2, "UNet", source)
    depths = {_transformer_depth(unet, b) for b in attn_blocks}
    if len(depths) != 1:
        raise PiSAError(f"{source}: the UNet has a varying number of transformer layers per block {sorted(depths)}.")

    config = load_template("unet")
    config.update(
        in_channels=dims(unet, "input_blocks.0.0.weight", 4, "UNet", source)[1],
        out_channels=dims(unet, "out.2.weight", 4, "UNet", source)[0],
        block_out_channels=channels,
        layers_per_block=lpb,
        down_block_types=["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in down_attn],
        up_block_types=["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in up_attn],
        cross_attention_dim=to_k[1],
        use_linear_projection=proj_in.ndim == 2,
        transformer_layers_per_block=depths.pop(),
        attention_head_dim=[heads_for_width(c) for c in channels],
    )
    return config


def unet_key_map(unet: dict, config: dict) -> list[tuple[str, str, dict]]:
    """(LDM module prefix, diffusers module prefix, sub-layer renames) for every UNet module.

    Down level i, layer j: ``input_blocks.{1 + i(L+1) + j}.{0: ResBlock, 1: transformer}``, its
    downsampler ``input_blocks.{(i+1)(L+1)}.0.op``; mid: ``middle_block.{0,1,2}`` = resnet,
    transformer, resnet; up level i, layer j (L+1 layers): ``output_blocks.{i(L+1) + j}.{0, 1}``,
    the upsampler after the last layer at ``.1.conv`` (``.2.conv`` when a transformer is at .1).
    """
    lpb = config["layers_per_block"]
    n_levels = len(config["block_out_channels"])
    pairs = [
        ("time_embed.0", "time_embedding.linear_1", {}),
        ("time_embed.2", "time_embedding.linear_2", {}),
        ("input_blocks.0.0", "conv_in", {}),
        ("out.0", "conv_norm_out", {}),
        ("out.2", "conv_out", {}),
        ("middle_block.0", "mid_block.resnets.0", UNET_RESNET_RENAMES),
        ("middle_block.1", "mid_block.attentions.0", {}),
        ("middle_block.2", "mid_block.resnets.1", UNET_RESNET_RENAMES),
    ]
    for i in range(n_levels):
        for j in range(lpb):
            k = 1 + i * (lpb + 1) + j
            pairs.append((f"input_blocks.{k}.0", f"down_blocks.{i}.resnets.{j}", UNET_RESNET_RENAMES))
            pairs.append((f"input_blocks.{k}.1", f"down_blocks.{i}.attentions.{j}", {}))
        if i < n_levels - 1:
            pairs.append((f"input_blocks.{(i + 1) * (lpb + 1)}.0.op", f"down_blocks.{i}.downsamplers.0.conv", {}))
    for i in range(n_levels):
        for j in range(lpb + 1):
            k = i * (lpb + 1) + j
            pairs.append((f"output_blocks.{k}.0", f"up_blocks.{i}.resnets.{j}", UNET_RESNET_RENAMES))
            pairs.append((f"output_blocks.{k}.1", f"up_blocks.{i}.attentions.{j}", {}))
        if i < n_levels - 1:
            last = f"output_blocks.{i * (lpb + 1) + lpb}"
            slot = 2 if _has_attention(unet, last) else 1
            pairs.append((f"{last}.{slot}.conv", f"up_blocks.{i}.upsamplers.0.conv", {}))
    return pairs


def convert_unet(unet: dict, config: dict, source: str = "checkpoint") -> dict:
    """LDM UNet state dict (prefix removed) -> diffusers UNet2DConditionModel state dict.
    Transformer internals (norm, proj_in, transformer_blocks.*, proj_out) keep their names."""
    return _rename(unet, unet_key_map(unet, config), "UNet", source)


# ---------------------------------------------------------------------------------------- VAE

VAE_ATTENTION_RENAMES = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def infer_vae_config(vae: dict, source: str = "checkpoint") -> dict:
    """AutoencoderKL config from LDM tensor shapes, on top of the SD2.1-base template.

    Inferred: block_out_channels (first ResBlock width of each ``encoder.down.{i}``),
    layers_per_block (ResBlocks in ``encoder.down.0``), latent_channels (``post_quant_conv``),
    image in/out channels, whether the mid block has attention. Norm groups, activation and the
    scaling factor (0.18215) come from the template: they are not stored in the weights.
    """
    levels = _indices(vae, r"encoder\.down\.(\d+)\.")
    if not levels or "post_quant_conv.weight" not in vae:
        raise PiSAError(f"{source}: the VAE (first_stage_model) is incomplete or has an unknown layout.")
    config = load_template("vae")
    config.update(
        block_out_channels=[dims(vae, f"encoder.down.{i}.block.0.conv1.weight", 4, "VAE", source)[0] for i in levels],
        layers_per_block=len(_indices(vae, r"encoder\.down\.0\.block\.(\d+)\.")),
        latent_channels=dims(vae, "post_quant_conv.weight", 4, "VAE", source)[0],
        in_channels=dims(vae, "encoder.conv_in.weight", 4, "VAE", source)[1],
        out_channels=dims(vae, "decoder.conv_out.weight", 4, "VAE", source)[0],
        down_block_types=["DownEncoderBlock2D"] * len(levels),
        up_block_types=["UpDecoderBlock2D"] * len(levels),
        mid_block_add_attention="encoder.mid.attn_1.q.weight" in vae,
    )
    return config


def vae_key_map(config: dict) -> list[tuple[str, str, dict]]:
    """(LDM prefix, diffusers prefix, renames) for every VAE module. The LDM decoder numbers its
    ``up.{i}`` levels from the lowest resolution's opposite end: ``decoder.up.{i}`` is diffusers
    ``decoder.up_blocks.{n-1-i}``."""
    n_levels = len(config["block_out_channels"])
    pairs = [("quant_conv", "quant_conv", {}), ("post_quant_conv", "post_quant_conv", {})]
    for part in ("encoder", "decoder"):
        pairs += [
            (f"{part}.conv_in", f"{part}.conv_in", {}),
            (f"{part}.conv_out", f"{part}.conv_out", {}),
            (f"{part}.norm_out", f"{part}.conv_norm_out", {}),
            (f"{part}.mid.block_1", f"{part}.mid_block.resnets.0", {}),
            (f"{part}.mid.block_2", f"{part}.mid_block.resnets.1", {}),
            (f"{part}.mid.attn_1", f"{part}.mid_block.attentions.0", VAE_ATTENTION_RENAMES),
        ]
    for i in range(n_levels):
        up = n_levels - 1 - i
        pairs += [
            (f"encoder.down.{i}.block", f"encoder.down_blocks.{i}.resnets", {}),
            (f"encoder.down.{i}.downsample.conv", f"encoder.down_blocks.{i}.downsamplers.0.conv", {}),
            (f"decoder.up.{i}.block", f"decoder.up_blocks.{up}.resnets", {}),
            (f"decoder.up.{i}.upsample.conv", f"decoder.up_blocks.{up}.upsamplers.0.conv", {}),
        ]
    return pairs


def convert_vae(vae: dict, config: dict, source: str = "checkpoint") -> dict:
    """LDM VAE state dict (prefix removed) -> diffusers AutoencoderKL state dict. ResBlock
    ``nin_shortcut`` becomes ``conv_shortcut``; the mid attention's 1x1 convs q/k/v/proj_out
    become the Linear layers to_q/to_k/to_v/to_out.0 (weights squeezed to 2-D)."""
    out = _rename(vae, vae_key_map(config), "VAE", source)
    for key, tensor in out.items():
        if ".mid_block.attentions.0.to_" in key and key.endswith(".weight") and tensor.ndim > 2:
            if any(n != 1 for n in tensor.shape[2:]):
                raise PiSAError(f"{source}: the VAE attention weight '{key}' has shape {tuple(tensor.shape)}; "
                                "expected a 1x1 convolution.")
            out[key] = tensor.reshape(tensor.shape[0], tensor.shape[1])
    return {k.replace(".nin_shortcut.", ".conv_shortcut."): v for k, v in out.items()}


# --------------------------------------------------------------------------------------- text

TEXT_LAYER_RENAMES = {
    "ln_1": "layer_norm1",
    "ln_2": "layer_norm2",
    "mlp.c_fc": "mlp.fc1",
    "mlp.c_proj": "mlp.fc2",
    "attn.out_proj": "self_attn.out_proj",
}


def stored_text_layers(text: dict) -> int:
    """Number of transformer resblocks stored in the OpenCLIP text tower."""
    return len(_indices(text, r"transformer\.resblocks\.(\d+)\."))


def infer_text_config(text: dict, source: str = "checkpoint") -> dict:
    """CLIPTextModel config from OpenCLIP tensor shapes, on top of the SD2.1-base template.

    SD2 conditions on the PENULTIMATE layer of the OpenCLIP tower followed by ``ln_final``, so a
    file storing N resblocks becomes a CLIPTextModel with N-1 layers (24 stored -> 23 for SD2.1).
    Inferred: width, vocab (token_embedding rows), positions, intermediate size (mlp.c_fc rows).
    Heads: ``heads_for_width(width)`` (not stored; SD2.1: 1024 // 64 = 16). BOS/EOS are the last
    two vocabulary ids and PAD is 0 ("!"), as in SD2's tokenizer. Activation (gelu) from template.
    """
    stored = stored_text_layers(text)
    if stored < 2 or "token_embedding.weight" not in text:
        raise PiSAError(f"{source}: the OpenCLIP text encoder has {stored} layer(s); SD2 needs at least 2.")
    vocab, width = dims(text, "token_embedding.weight", 2, "text encoder", source)
    config = load_template("text_encoder")
    config.update(
        vocab_size=vocab,
        hidden_size=width,
        max_position_embeddings=dims(text, "positional_embedding", 2, "text encoder", source)[0],
        intermediate_size=dims(text, "transformer.resblocks.0.mlp.c_fc.weight", 2, "text encoder", source)[0],
        num_hidden_layers=stored - 1,
        num_attention_heads=heads_for_width(width),
        bos_token_id=vocab - 2,
        eos_token_id=vocab - 1,
        pad_token_id=0,
    )
    if "text_projection" in text:
        config["projection_dim"] = dims(text, "text_projection", 2, "text encoder", source)[1]
    return config


def convert_text(text: dict, config: dict, source: str = "checkpoint") -> dict:
    """OpenCLIP text tower (prefix removed) -> CLIPTextModel state dict (names without the
    ``text_model.`` prefix; see ``match_text_prefix``). Keeps the first ``num_hidden_layers``
    resblocks, splits ``attn.in_proj_weight/bias`` [3W, ...] into q, k, v (in that order), and
    drops the unused projection head (text_projection, logit_scale)."""
    layers = config["num_hidden_layers"]
    out = {
        "embeddings.token_embedding.weight": text["token_embedding.weight"],
        "embeddings.position_embedding.weight": text["positional_embedding"],
    }
    regex = re.compile(r"transformer\.resblocks\.(\d+)\.(.+)")
    for key, tensor in text.items():
        if key in ("token_embedding.weight", "positional_embedding") or key in UNUSED_TEXT_KEYS:
            continue
        if key.startswith("ln_final."):
            out["final_layer_norm." + key[len("ln_final."):]] = tensor
            continue
        match = regex.fullmatch(key)
        if match is None:
            raise PiSAError(f"{source}: unexpected text-encoder key '{key}' for a Stable Diffusion 2.x checkpoint.")
        n, rest = int(match.group(1)), match.group(2)
        if n >= layers:
            continue  # the last stored layer: SD2 uses the penultimate one
        out.update(_text_layer_entries(f"encoder.layers.{n}", rest, tensor, source))
    return out


def _text_layer_entries(layer: str, rest: str, tensor: torch.Tensor, source: str) -> dict:
    """Diffusers entries for one OpenCLIP resblock tensor ``rest`` (e.g. ``attn.in_proj_weight``)."""
    if rest in ("attn.in_proj_weight", "attn.in_proj_bias"):
        kind = rest.rsplit("_", 1)[1]  # weight | bias
        if tensor.ndim == 0 or tensor.shape[0] % 3:
            raise PiSAError(f"{source}: the text-encoder tensor '{layer}.{rest}' has shape {tuple(tensor.shape)}; "
                            "expected q, k and v stacked along its first dimension.")
        q, k, v = tensor.chunk(3, dim=0)
        return {f"{layer}.self_attn.{name}_proj.{kind}": t.contiguous() for name, t in zip("qkv", (q, k, v))}
    for old, new in TEXT_LAYER_RENAMES.items():
        if rest.startswith(old + "."):
            return {f"{layer}.{new}{rest[len(old):]}": tensor}
    raise PiSAError(f"{source}: unexpected text-encoder key '{layer}.{rest}' for a Stable Diffusion 2.x checkpoint.")


def text_prefix_for(model: torch.nn.Module) -> str:
    """``text_model.`` when this transformers version's CLIPTextModel names its tensors so
    (transformers 4.x does, 5.x does not), else ''."""
    return "text_model." if any(k.startswith("text_model.") for k in model.state_dict()) else ""
