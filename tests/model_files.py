"""Write tiny base models to disk in the real formats (diffusers folder, single-file LDM checkpoint)
and build wrong-base variants. Test helpers only.

The single-file writer maps diffusers names to the original LDM layout with its own rules (it
does not invert pisa_core's tables) and is checked against diffusers' own single-file
conversion in the tests.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from safetensors.torch import load_file, save_file
from tiny_models import TEXT_WIDTH, tiny_text_encoder, tiny_unet, write_tiny_tokenizer
from transformers import CLIPTextConfig, CLIPTextModel

SCHEDULER = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
             "prediction_type": "epsilon", "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}


# ------------------------------------------------------------------------- component builders


def sd2_text_encoder(seed: int = 0, width: int = TEXT_WIDTH, layers: int = 2) -> CLIPTextModel:
    """Tiny CLIPTextModel following the loader's SD2 head rule (64-wide heads, at least one).
    Same as tiny_models.tiny_text_encoder except the head count (and optionally width/layers);
    LayerNorms are perturbed so that a mapping mistake changes the output."""
    base = tiny_text_encoder(seed).config.to_dict()
    config = CLIPTextConfig(**{**base, "hidden_size": width, "num_hidden_layers": layers,
                               "num_attention_heads": max(1, width // 64), "projection_dim": width})
    torch.manual_seed(seed + 2)
    model = CLIPTextModel(config).eval()
    g = torch.Generator().manual_seed(seed + 200)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.add_(0.05 * torch.randn(module.weight.shape, generator=g))
                module.bias.add_(0.05 * torch.randn(module.bias.shape, generator=g))
    return model


def vae_with(seed: int = 0, latent_channels: int = 4) -> AutoencoderKL:
    """A small VAE (two levels) with a chosen latent channel count."""
    torch.manual_seed(seed + 1)
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(32, 64), layers_per_block=1, latent_channels=latent_channels, norm_num_groups=32,
    ).eval()


def sd1_like_unet(seed: int = 0):
    """SD1.x structure: convolutional proj_in/proj_out, cross-attention width 768 (CLIP-L)."""
    return tiny_unet(seed, cross_attention_dim=768, use_linear_projection=False)


# ----------------------------------------------------------------------- diffusers folder


def _prefix_text_keys(folder: Path) -> None:
    """Name the text encoder's tensors `text_model.*` as the hub's SD2.1 files (and transformers 4)
    do; transformers 5 saves them without the prefix."""
    for path in folder.glob("*.safetensors"):
        state = load_file(path)
        if not any(k.startswith("text_model.") for k in state):
            save_file({f"text_model.{k}": v for k, v in state.items()}, str(path), metadata={"format": "pt"})


def write_diffusers_folder(folder, unet, vae, text_encoder, *, prediction_type="epsilon", variant=None) -> Path:
    """Save the components as a diffusers SD2 folder. ``variant="fp16"`` writes only fp16-variant
    weight files (``*.fp16.safetensors``) like the hub's fp16 branch."""
    folder = Path(folder)
    if variant == "fp16":
        unet, vae, text_encoder = (copy.deepcopy(m).half() for m in (unet, vae, text_encoder))
    unet.save_pretrained(folder / "unet", variant=variant)
    vae.save_pretrained(folder / "vae", variant=variant)
    text_encoder.save_pretrained(folder / "text_encoder", variant=variant)
    _prefix_text_keys(folder / "text_encoder")
    write_tiny_tokenizer(folder / "tokenizer", text_encoder.config.vocab_size)
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "DDPMScheduler", **SCHEDULER, "prediction_type": prediction_type}))
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "DDPMScheduler"]}))
    return folder


# -------------------------------------------------------------------- single-file LDM layout

RESNET_TO_LDM = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                 "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
UNET_FIXED_TO_LDM = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
                     "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def ldm_unet_state(unet) -> dict:
    """diffusers UNet2DConditionModel -> LDM ``openaimodel`` names (without prefix)."""
    lpb = unet.config.layers_per_block
    up_attn = ["CrossAttn" in t for t in unet.config.up_block_types]
    return {_ldm_unet_name(name, lpb, up_attn): t.clone() for name, t in unet.state_dict().items()}


def _ldm_unet_name(name: str, lpb: int, up_attn: list[bool]) -> str:
    """Down level i, layer j sits at input block 1 + i(L+1) + j (resnet .0, transformer .1), its
    downsampler at input block (i+1)(L+1) ``.0.op``; the mid block is middle_block.0/1/2; up level
    i, layer j at output block i(L+1) + j, its upsampler after the last layer at slot 2 when that
    layer has a transformer, else slot 1."""
    module, param = name.rsplit(".", 1)
    if module in UNET_FIXED_TO_LDM:
        return f"{UNET_FIXED_TO_LDM[module]}.{param}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(\w+)", name):
        return f"input_blocks.{1 + int(m[1]) * (lpb + 1) + int(m[2])}.0.{RESNET_TO_LDM[m[3]]}.{m[4]}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", name):
        return f"input_blocks.{1 + int(m[1]) * (lpb + 1) + int(m[2])}.1.{m[3]}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", name):
        return f"input_blocks.{(int(m[1]) + 1) * (lpb + 1)}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d)\.(\w+)\.(\w+)", name):
        return f"middle_block.{2 * int(m[1])}.{RESNET_TO_LDM[m[2]]}.{m[3]}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", name):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(\w+)", name):
        return f"output_blocks.{int(m[1]) * (lpb + 1) + int(m[2])}.0.{RESNET_TO_LDM[m[3]]}.{m[4]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.+)", name):
        return f"output_blocks.{int(m[1]) * (lpb + 1) + int(m[2])}.1.{m[3]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", name):
        i = int(m[1])
        return f"output_blocks.{i * (lpb + 1) + lpb}.{2 if up_attn[i] else 1}.conv.{m[2]}"
    raise KeyError(name)


VAE_ATTN_TO_LDM = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def ldm_vae_state(vae) -> dict:
    """diffusers AutoencoderKL -> LDM ``autoencoder`` names (without prefix). Decoder levels are
    numbered from the other end (``up_blocks.i`` = ``up.{n-1-i}``); mid-attention Linear weights
    become 1x1 conv weights [C, C, 1, 1]."""
    n = len(vae.config.block_out_channels)
    out = {}
    for name, tensor in vae.state_dict().items():
        new = name.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets", r"encoder.down.\1.block", new)
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0", r"encoder.down.\1.downsample", new)
        new = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets", lambda m: f"decoder.up.{n - 1 - int(m[1])}.block", new)
        new = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0",
                     lambda m: f"decoder.up.{n - 1 - int(m[1])}.upsample", new)
        new = new.replace("mid_block.resnets.0", "mid.block_1").replace("mid_block.resnets.1", "mid.block_2")
        if ".mid_block.attentions.0." in new:
            head, rest = new.split(".mid_block.attentions.0.")
            module, param = rest.rsplit(".", 1)
            new = f"{head}.mid.attn_1.{VAE_ATTN_TO_LDM[module]}.{param}"
            if param == "weight" and module != "group_norm":
                tensor = tensor[:, :, None, None]
        out[new] = tensor.clone()
    return out


TEXT_TO_OPENCLIP = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                    "self_attn.out_proj": "attn.out_proj"}


def ldm_text_state(text_encoder, seed: int = 0) -> dict:
    """CLIPTextModel -> OpenCLIP text tower names (without prefix), as stored in SD2 files: q/k/v
    concatenated into ``attn.in_proj_*``, plus one extra (unused) last resblock and the OpenCLIP
    ``text_projection`` / ``logit_scale``."""
    sd = {k.removeprefix("text_model."): v for k, v in text_encoder.state_dict().items()}
    layers = text_encoder.config.num_hidden_layers
    width = text_encoder.config.hidden_size
    out = {"token_embedding.weight": sd["embeddings.token_embedding.weight"].clone(),
           "positional_embedding": sd["embeddings.position_embedding.weight"].clone(),
           "ln_final.weight": sd["final_layer_norm.weight"].clone(),
           "ln_final.bias": sd["final_layer_norm.bias"].clone()}
    for n in range(layers):
        src, dst = f"encoder.layers.{n}.", f"transformer.resblocks.{n}."
        for p in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{p}"] = torch.cat([sd[f"{src}self_attn.{x}_proj.{p}"] for x in "qkv"]).clone()
            for old, new in TEXT_TO_OPENCLIP.items():
                out[f"{dst}{new}.{p}"] = sd[f"{src}{old}.{p}"].clone()
    g = torch.Generator().manual_seed(seed + 300)
    first, last = "transformer.resblocks.0.", f"transformer.resblocks.{layers}."
    for key in [k for k in out if k.startswith(first)]:
        out[last + key[len(first):]] = torch.randn(out[key].shape, generator=g)
    out["text_projection"] = torch.randn(width, width, generator=g)
    out["logit_scale"] = torch.tensor(4.6052)
    return out


def ldm_state_dict(unet, vae, text_encoder) -> dict:
    """The full single-file key layout of an SD2 checkpoint (plus a schedule buffer as the real
    files have)."""
    sd = {f"model.diffusion_model.{k}": v for k, v in ldm_unet_state(unet).items()}
    sd.update({f"first_stage_model.{k}": v for k, v in ldm_vae_state(vae).items()})
    sd.update({f"cond_stage_model.model.{k}": v for k, v in ldm_text_state(text_encoder).items()})
    sd["alphas_cumprod"] = torch.linspace(0.999, 0.005, 1000)
    return sd


def save_state_dict(sd: dict, path, fmt: str = "safetensors") -> Path:
    """Write an LDM state dict as .safetensors, or as a .ckpt wrapped like the original
    (``{"state_dict": ..., "global_step": ...}``)."""
    path = Path(path)
    if fmt == "safetensors":
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    elif fmt == "ckpt":
        torch.save({"state_dict": sd, "global_step": 110000}, path)
    else:
        raise ValueError(fmt)
    return path


def write_single_file(path, unet, vae, text_encoder, fmt: str = "safetensors") -> Path:
    """Write the components as one SD2 single-file checkpoint in the LDM key layout."""
    return save_state_dict(ldm_state_dict(unet, vae, text_encoder), path, fmt)


# ------------------------------------------------------------------------- wrong-base files


def sd1_like_state(seed: int = 0) -> dict:
    """SD1.x-like: conv projections, cross-attention 768, CLIP-L text encoder in HF naming under
    ``cond_stage_model.transformer.text_model.*``."""
    text = sd2_text_encoder(seed, width=768, layers=1)
    sd = {f"model.diffusion_model.{k}": v for k, v in ldm_unet_state(sd1_like_unet(seed)).items()}
    sd.update({f"first_stage_model.{k}": v for k, v in ldm_vae_state(vae_with(seed)).items()})
    sd.update({f"cond_stage_model.transformer.text_model.{k.removeprefix('text_model.')}": v
               for k, v in text.state_dict().items()})
    return sd


def sdxl_like_state(base: dict) -> dict:
    """SDXL-like: text encoders under ``conditioner.embedders.N`` and a UNet ``label_emb``."""
    sd = {k.replace("cond_stage_model.model.", "conditioner.embedders.1.model."): v for k, v in base.items()}
    sd["model.diffusion_model.label_emb.0.0.weight"] = torch.zeros(8, 8)
    return sd


def v_pred_marker_state(base: dict) -> dict:
    """A 768-v style file carrying the ``v_pred`` marker key."""
    return {**base, "v_pred": torch.zeros(())}


def v_pred_heuristic_state(base: dict) -> dict:
    """A file whose last output block's first transformer norm1 bias has the wide spread seen in
    SD2.x v-prediction models (std > 0.09)."""
    key = max((k for k in base if "output_blocks" in k and k.endswith(".1.transformer_blocks.0.norm1.bias")),
              key=lambda k: int(k.split("output_blocks.")[1].split(".")[0]))
    g = torch.Generator().manual_seed(7)
    return {**base, key: 0.3 * torch.randn(base[key].shape, generator=g)}


def vae_only_state(base: dict) -> dict:
    return {k: v for k, v in base.items() if k.startswith("first_stage_model.")}


def text_only_state(base: dict) -> dict:
    return {k: v for k, v in base.items() if k.startswith("cond_stage_model.")}
