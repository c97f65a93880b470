"""Offline loading of the Stable Diffusion 2.1-base model that PiSA-SR runs on.

Accepted sources:

- a diffusers folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/), fp32 or fp16-variant
  weight files (safetensors, sharded or not, or `.bin` pickles);
- a single-file LDM checkpoint: ``.safetensors``, or ``.ckpt`` / ``.pt`` / ``.pth``.

Every weight file goes through `files.tensors` (no pickled code ever runs). UNet and VAE weights are
streamed tensor by tensor straight into the target dtype and device: an optional `unet_transform`
sees each UNet tensor in float32 first (PiSA-SR merges its LoRAs there, so the merged weight is
rounded once), and no full float32 copy of the model is ever held.

PiSA-SR only ever conditions the UNet on the empty prompt, so its embedding is computed once per
base model and kept in a small cache file (`prompt_cache`); the text encoder is loaded only when
that cache has no entry, or when the caller keeps it (training's captions).
A model of the wrong family (SD1.x, SDXL, 768-v, inpainting, parts only, ...) is rejected by its
STRUCTURE, never by exact SD2.1 sizes, so tiny SD2-structured test models load the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from ..errors import PiSAError
from ..files.tensors import LazyTensor, SafetensorsFile, is_safetensors, load_pickle, named_tensors, read_tensors
from . import ldm_convert as ldm
from . import prompt_cache

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth")
EXPECTED = "PiSA-SR needs Stable Diffusion 2.1-base (epsilon prediction)"
WHAT = "a Stable Diffusion checkpoint"

Transform = Callable[[str, torch.Tensor], torch.Tensor]


@dataclass
class BaseModel:
    """The loaded base model; ``unet``/``vae`` are in eval mode with gradients off."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    prompt_embeds: torch.Tensor  # [1, 77, D] float32 CPU: embedding of the empty prompt ""
    scaling_factor: float
    source: str
    kind: str  # "diffusers" | "single-file"
    text_encoder: CLIPTextModel | None = None
    tokenizer: CLIPTokenizer | None = None
    scheduler_config: dict = field(default_factory=lambda: ldm.load_template("scheduler"))
    prompt_from_cache: bool = False  # the embedding came from the cache: no text encoder was loaded


# ------------------------------------------------------------------------------ public API


def load_base_model(path, *, device="cpu", dtype=torch.float32, keep_text_encoder=False,
                    unet_transform: Transform | None = None) -> BaseModel:
    """Load SD2.1-base (diffusers folder or single-file checkpoint) for PiSA-SR inference/training.
    The UNet and VAE end on ``device`` in ``dtype``; ``prompt_embeds`` is float32 on CPU.
    ``unet_transform(name, tensor)`` gets every UNet tensor (diffusers name, float32) before the
    cast."""
    _check_dtype(dtype)
    path = Path(path).expanduser()
    if path.is_dir():
        return _load_diffusers_folder(path, device, dtype, keep_text_encoder, unet_transform)
    if not path.exists():
        raise PiSAError(f"Base model '{path}' does not exist; expected a diffusers folder or a .safetensors/.ckpt file.")
    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise PiSAError(
            f"Base model '{path}' is not a checkpoint; expected a diffusers folder or a "
            f"{'/'.join(SINGLE_FILE_SUFFIXES)} file, found a '{path.suffix or 'no'}' extension."
        )
    return _load_single_file(path, device, dtype, keep_text_encoder, unet_transform)


def empty_prompt_ids(vocab_size: int, positions: int = 77) -> torch.Tensor:
    """Token ids of "" for SD2's CLIP tokenizer: [BOS, EOS, PAD x (positions-2)] with BOS and EOS
    the last two vocabulary ids (49406, 49407 for the real model) and PAD "!" = 0. Shape [1, P]."""
    ids = torch.zeros(1, positions, dtype=torch.long)
    ids[0, 0], ids[0, 1] = vocab_size - 2, vocab_size - 1
    return ids


def encode_prompts(text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer | None, prompts: list[str]) -> torch.Tensor:
    """``last_hidden_state`` of the prompts, [N, 77, D], in the text encoder's dtype and device.
    Prompts are padded/truncated to the encoder's positions (77). Without a tokenizer (single-file
    sources carry none) only empty prompts can be encoded."""
    positions = text_encoder.config.max_position_embeddings
    if tokenizer is not None:
        ids = tokenizer(list(prompts), padding="max_length", max_length=positions, truncation=True,
                        return_tensors="pt").input_ids
    elif all(p == "" for p in prompts):
        ids = empty_prompt_ids(text_encoder.config.vocab_size, positions).repeat(len(prompts), 1)
    else:
        raise PiSAError("Encoding non-empty prompts needs a tokenizer; load the base model from a diffusers folder.")
    device = next(text_encoder.parameters()).device
    with torch.no_grad():
        return text_encoder(input_ids=ids.to(device))[0]


def check_diffusers_folder(folder) -> None:
    """Raise PiSAError unless ``folder`` holds an SD2.x-base-structured diffusers model (checked
    from the component configs only; no weights are read)."""
    folder = Path(folder)
    configs = {name: _read_folder_config(folder, name, file) for name, file in (
        ("unet", "config.json"), ("vae", "config.json"), ("text_encoder", "config.json"),
        ("scheduler", "scheduler_config.json"))}
    unet, vae, text, scheduler = configs["unet"], configs["vae"], configs["text_encoder"], configs["scheduler"]
    if (folder / "text_encoder_2").is_dir() or unet.get("addition_embed_type") or unet.get("class_embed_type"):
        _reject(folder, "it has SDXL-style extra conditioning (text_encoder_2 / addition or class embeddings)")
    _check_structure(
        folder,
        in_channels=unet.get("in_channels", 4),
        linear_projection=bool(unet.get("use_linear_projection", False)),
        cross_attention_dim=unet.get("cross_attention_dim"),
        text_width=text.get("hidden_size"),
        latent_channels=vae.get("latent_channels", 4),
        prediction=scheduler.get("prediction_type", "epsilon"),
        prediction_evidence="the scheduler config",
    )


def check_single_file(state_dict: dict, source) -> None:
    """Raise PiSAError unless the LDM state dict is an SD2.x-base-structured checkpoint with all
    three components (UNet, VAE, OpenCLIP text encoder)."""
    def has(prefix: str) -> bool:
        return any(k.startswith(prefix) for k in state_dict)

    if has("conditioner.embedders."):
        _reject(source, "it has SDXL text encoders (conditioner.embedders.*)")
    if not has(ldm.UNET_PREFIX):
        if has(ldm.VAE_PREFIX):
            _reject(source, "it holds only VAE weights (first_stage_model.*) and no UNet")
        if has("cond_stage_model."):
            _reject(source, "it holds only text-encoder weights (cond_stage_model.*) and no UNet")
        _reject(source, "it has no Stable Diffusion UNet weights (model.diffusion_model.*)")
    if has(ldm.UNET_PREFIX + "label_emb."):
        _reject(source, "its UNet has a label/size embedding (label_emb) as in SDXL")
    if has("cond_stage_model.transformer."):
        _reject(source, "it has a CLIP-L text encoder (cond_stage_model.transformer.*) as in SD1.x")
    if not has(ldm.TEXT_PREFIX):
        _reject(source, "it has no OpenCLIP text encoder (cond_stage_model.model.*)")
    if not has(ldm.VAE_PREFIX):
        _reject(source, "it has no VAE (first_stage_model.*)")
    unet, vae, text = ldm.split_components(state_dict)
    prediction, evidence = _single_file_prediction(state_dict, unet)
    attn = next((k for k in unet if k.endswith("attn2.to_k.weight")), None)
    proj_in = next((k for k in unet if k.endswith(".proj_in.weight")), None)
    _check_structure(
        source,
        in_channels=_shape(unet, "input_blocks.0.0.weight", 1, source),
        linear_projection=proj_in is not None and unet[proj_in].ndim == 2,
        cross_attention_dim=_shape(unet, attn, 1, source),
        text_width=_shape(text, "token_embedding.weight", 1, source),
        latent_channels=_shape(vae, "post_quant_conv.weight", 0, source),
        prediction=prediction,
        prediction_evidence=evidence,
    )


# ------------------------------------------------------------------------- structure checks


def _reject(source, finding: str):
    raise PiSAError(f"'{source}' is not a usable base model: {finding}; {EXPECTED}.")


def _shape(state: dict, key: str | None, dim: int, source) -> int | None:
    if key is None or key not in state:
        return None
    if state[key].ndim <= dim:
        _reject(source, f"its tensor '{key}' has shape {tuple(state[key].shape)}")
    return int(state[key].shape[dim])


def _check_structure(source, *, in_channels, linear_projection, cross_attention_dim, text_width,
                     latent_channels, prediction, prediction_evidence) -> None:
    """The SD2.x-base structural rules shared by folders and single files: UNet in_channels 4
    (9 = inpainting), linear attention projections (SD1.x uses 1x1 convs), cross-attention width
    equal to the text-encoder width, 4 latent channels, epsilon prediction."""
    if in_channels == 9:
        _reject(source, "its UNet takes 9 input channels, an inpainting model")
    if in_channels != 4:
        _reject(source, f"its UNet takes {in_channels} input channels instead of 4")
    if not linear_projection:
        _reject(source, "its UNet attention blocks use convolutional projections (proj_in) as in SD1.x")
    if latent_channels != 4:
        _reject(source, f"its VAE has {latent_channels} latent channels instead of 4")
    if cross_attention_dim != text_width:
        _reject(source, f"its UNet cross-attention width {cross_attention_dim} differs from "
                        f"the text-encoder width {text_width}")
    if prediction != "epsilon":
        _reject(source, f"{prediction_evidence} says it is a {prediction} model (e.g. SD2.x 768-v)")


# Known heuristic (also used by ComfyUI): in SD2.x v-prediction models the bias of the first
# transformer norm in the last output block has a std above 0.09; in epsilon models it is lower.
V_PRED_STD_THRESHOLD = 0.09


def _single_file_prediction(state_dict: dict, unet: dict) -> tuple[str, str]:
    """(prediction type, evidence) of a single file: a ``v_pred`` marker key, else the norm-bias
    heuristic above on the last output block that has a transformer."""
    if "v_pred" in state_dict:
        return "v_prediction", "its 'v_pred' marker key"
    last = max(ldm._indices(unet, r"output_blocks\.(\d+)\."), default=None)
    bias = unet.get(f"output_blocks.{last}.1.transformer_blocks.0.norm1.bias")
    if bias is not None and torch.std(bias.float(), unbiased=False).item() > V_PRED_STD_THRESHOLD:
        return "v_prediction", f"the spread of output_blocks.{last}.1.transformer_blocks.0.norm1.bias"
    return "epsilon", "the weights"



# --------------------------------------------------------------------------- diffusers folder


def _read_folder_config(folder: Path, name: str, file: str) -> dict:
    path = folder / name / file
    if not path.is_file():
        raise PiSAError(f"'{folder}' is not a Stable Diffusion diffusers folder: {name}/{file} is missing.")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PiSAError(f"'{path}' is not a readable JSON config ({err}).") from err


# Weight files of a diffusers/transformers component, in the order diffusers prefers them; the
# fp16-variant names (`*.fp16.*`) are tried last.
WEIGHT_FILES = (
    "diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.bin", "diffusion_pytorch_model.bin.index.json",
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
)
# Old diffusers files name the VAE mid-block attention layers like this; today's classes do not.
DEPRECATED_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _variant_name(name: str) -> str:
    stem, dot, ext = name.partition(".")
    return f"{stem}.fp16.{ext}"


def weight_files(sub: Path) -> list[Path]:
    """The weight file(s) of one component folder (an index names its shards)."""
    names = [*WEIGHT_FILES, *(_variant_name(n) for n in WEIGHT_FILES)]
    for name in names:
        path = sub / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return [path]
        try:
            shards = list(json.loads(path.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise PiSAError(f"'{path}' is not a readable weight index ({type(err).__name__}: {err}).") from None
        if not all(isinstance(shard, str) and shard and Path(shard).name == shard for shard in shards):
            raise PiSAError(f"'{path}' is not a readable weight index (its weight_map should name files beside it).")
        return [sub / shard for shard in dict.fromkeys(shards)]
    raise PiSAError(f"'{sub}' has no weight file (expected e.g. {WEIGHT_FILES[0]}); it cannot be loaded as a "
                    f"{'UNet2DConditionModel' if sub.name == 'unet' else sub.name}.")


def _file_tensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    if not path.is_file():
        raise PiSAError(f"'{path}' is missing (named by the folder's weight index).")
    if is_safetensors(path, WHAT):
        yield from SafetensorsFile(path, WHAT).items()
        return
    yield from named_tensors(load_pickle(path, WHAT), path, WHAT).items()


def _folder_tensors(sub: Path) -> Iterator[tuple[str, torch.Tensor]]:
    for path in weight_files(sub):
        for key, tensor in _file_tensors(path):
            module, _, leaf = key.rpartition(".")
            parent, _, last = module.rpartition(".")
            if ".attentions." in key and last in DEPRECATED_ATTENTION_NAMES:
                key = f"{parent}.{DEPRECATED_ATTENTION_NAMES[last]}.{leaf}"
            yield key, tensor


def _load_diffusers_folder(folder: Path, device, dtype, keep_text_encoder, unet_transform) -> BaseModel:
    check_diffusers_folder(folder)
    unet_cfg = _read_folder_config(folder, "unet", "config.json")
    vae_cfg = _read_folder_config(folder, "vae", "config.json")
    unet = _build(lambda: UNet2DConditionModel.from_config(unet_cfg), _folder_tensors(folder / "unet"),
                  device, dtype, "UNet", folder / "unet", unet_transform)
    vae = _build(lambda: AutoencoderKL.from_config(vae_cfg), _folder_tensors(folder / "vae"),
                 device, dtype, "VAE", folder / "vae")
    identity = [p for name in ("text_encoder", "tokenizer") if (folder / name).is_dir()
                for p in sorted((folder / name).iterdir()) if p.is_file()]

    def text_parts():
        encoder = _from_pretrained(CLIPTextModel, folder, "text_encoder").to(torch.float32).eval()
        try:
            tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
        except (OSError, ValueError, TypeError) as err:
            raise PiSAError(f"'{folder / 'tokenizer'}' is not a readable CLIP tokenizer ({type(err).__name__}).") from err
        return encoder, tokenizer

    scheduler = _read_folder_config(folder, "scheduler", "scheduler_config.json")
    return _assemble(unet, vae, folder, "diffusers", identity, text_parts, device, dtype, keep_text_encoder,
                     scaling_factor=float(vae.config.scaling_factor), scheduler_config=scheduler)


def _from_pretrained(cls, folder: Path, name: str, **kwargs):
    sub = folder / name
    variant = "fp16" if weight_files(sub)[0].name.split(".")[1:2] == ["fp16"] else None
    try:
        return cls.from_pretrained(sub, local_files_only=True, variant=variant, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise PiSAError(f"'{sub}' could not be loaded as a {cls.__name__} ({type(err).__name__}).") from err


# -------------------------------------------------------------------------------- single file


@dataclass
class SingleFile:
    """A single-file checkpoint's components with their inferred configs and diffusers names;
    the tensors are LazyTensors of a safetensors file (nothing read yet) or memory-mapped."""

    unet_config: dict
    unet: dict
    vae_config: dict
    vae: dict
    text_config: CLIPTextConfig
    text: dict


def read_single_file(path) -> SingleFile:
    """Everything the single-file loader learns from a checkpoint's keys and shapes before it
    builds a model: the structure checked (check_single_file), each component's config inferred
    and its keys renamed."""
    path = Path(path)
    state_dict = read_tensors(path, WHAT, lazy=True)
    check_single_file(state_dict, path)
    unet_sd, vae_sd, text_sd = ldm.split_components(state_dict)
    unet_cfg = ldm.infer_unet_config(unet_sd, path)
    vae_cfg = ldm.infer_vae_config(vae_sd, path)
    text_cfg = CLIPTextConfig(**ldm.infer_text_config(text_sd, path))
    return SingleFile(unet_cfg, ldm.convert_unet(unet_sd, unet_cfg, path), vae_cfg,
                      ldm.convert_vae(vae_sd, vae_cfg, path), text_cfg,
                      ldm.convert_text(text_sd, text_cfg.to_dict(), path))


def _load_single_file(path: Path, device, dtype, keep_text_encoder, unet_transform) -> BaseModel:
    parts = read_single_file(path)
    unet = _build(lambda: UNet2DConditionModel.from_config(parts.unet_config), parts.unet.items(), device, dtype,
                  "UNet", path, unet_transform)
    vae = _build(lambda: AutoencoderKL.from_config(parts.vae_config), parts.vae.items(), device, dtype, "VAE", path)

    def text_parts():
        encoder = _build(lambda: CLIPTextModel(parts.text_config), parts.text.items(), "cpu", torch.float32,
                         "text encoder", path, rename=ldm.text_prefix_for)
        return encoder, None

    return _assemble(unet, vae, path, "single-file", [path], text_parts, device, dtype, keep_text_encoder,
                     scaling_factor=float(parts.vae_config["scaling_factor"]),
                     scheduler_config=ldm.load_template("scheduler"))


# ------------------------------------------------------------------------------- assembling


def _build(make, tensors, device, dtype, component: str, source, transform: Transform | None = None,
           rename=None):
    """Instantiate a model without allocating weights, then assign the tensors one by one, each
    converted to `dtype` on `device` in memory of its own (strict: every parameter must be present
    with the right shape). `transform` sees each tensor in float32 before the cast."""
    model = _empty_model(make)
    prefix = rename(model) if rename is not None else ""
    state = {}
    for key, tensor in tensors:
        if isinstance(tensor, LazyTensor):
            tensor = tensor.load()
        if tensor.is_floating_point():
            if transform is not None:
                tensor = transform(key, tensor.float())
            tensor = tensor.to(device=device, dtype=dtype, copy=True)
        state[prefix + key] = tensor
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[1:2] or [str(err)]
        raise PiSAError(f"'{source}': the {component} weights do not match the inferred structure ({first[0].strip()}).") from err
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())) and torch.device(device).type != "meta":
        raise PiSAError(f"'{source}': the {component} weights are incomplete.")
    return model.to(device).eval().requires_grad_(False)


def _empty_model(make):
    """Build with parameters on the meta device when accelerate is available (no random init of
    ~1 B parameters); buffers stay real so non-persistent ones (position ids) keep their values."""
    try:
        from accelerate import init_empty_weights
    except ImportError:
        return make()
    with init_empty_weights():
        return make()


def _assemble(unet, vae, source, kind, identity_files, text_parts, device, dtype, keep_text_encoder,
              *, scaling_factor, scheduler_config) -> BaseModel:
    """The empty-prompt embedding (float32, CPU) from the cache, or from the text encoder, which is
    kept only if asked for."""
    key = prompt_cache.identity(identity_files)
    cached = None if keep_text_encoder else prompt_cache.load(key)
    text_encoder = tokenizer = None
    if cached is None:
        text_encoder, tokenizer = text_parts()
        prompt_embeds = encode_prompts(text_encoder.cpu(), tokenizer, [""]).float().cpu()
        prompt_cache.store(key, prompt_embeds, str(source))
        if keep_text_encoder:
            torch.nn.Module.to(text_encoder, device=device, dtype=dtype)
            text_encoder.eval().requires_grad_(False)
        else:
            text_encoder = tokenizer = None
    else:
        prompt_embeds = cached
    return BaseModel(unet=unet, vae=vae, prompt_embeds=prompt_embeds, scaling_factor=scaling_factor,
                     source=str(source), kind=kind, text_encoder=text_encoder, tokenizer=tokenizer,
                     scheduler_config=dict(scheduler_config), prompt_from_cache=cached is not None)


def _check_dtype(dtype) -> None:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point or dtype == torch.float64:
        raise PiSAError(f"dtype must be torch.float32, torch.float16 or torch.bfloat16, got {dtype!r}.")
