"""The fast decoder: a trained half-width replacement for the SD2.1 VAE decoder, read safely.

Where it comes from: VOSR (CVPR 2026, arXiv 2604.03225; Apache-2.0), by PiSA-SR's first author and
colleagues, publishes `sd21_lwdecoder.pth`. It decodes the SD2.1 latent space PiSA-SR works in with
about a quarter of the VAE decoder's work. Facts of that file this module relies on:

- The structure is diffusers' `Decoder` with every width halved: block_out_channels (64, 128, 256,
  256), layers_per_block 2 (three resnets per up block), upsamplers in all but the last up block,
  a mid block of two resnets around one single-head self-attention at width 256; GroupNorm with 32
  groups and eps 1e-6; SiLU.
- It has no post-quantisation convolution: its input is the unscaled latent z / 0.18215 (ComfyUI's
  LATENT), its output the image in [-1, 1] (clamped by the caller).
- The file is a `torch.save` dict: `config` (in_channels, out_channels, block_out_channels,
  layers_per_block) and `model_state_dict` (diffusers `Decoder` tensor names: conv_in, mid_block.*,
  up_blocks.*, conv_norm_out, conv_out); other entries may sit beside these two.

Nothing here is hard-coded to those widths: the structure is inferred from the tensor shapes (as
spandrel does) and checked against `config`; the result IS a diffusers `Decoder`, so the pipeline
runs it in place of the VAE's decoder and every decode feature (exact tiles, progress, cancel,
dtype rules) applies unchanged. This project's `.safetensors` form holds the same tensor names
with the config as JSON in its metadata (`pisa-sr convert`).
"""

from __future__ import annotations

import io
import json
import pickletools
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers.models.autoencoders.vae import Decoder
from safetensors.torch import save

from ..errors import PiSAError
from ..files.atomic import atomic_output
from ..files.kinds import SAFETENSORS, TORCH_ZIP, sniff_file
from ..files.tensors import SafetensorsFile, is_safetensors, load_pickle

WHAT = "a fast decoder file (VOSR's sd21_lwdecoder.pth or its .safetensors)"
BASE_DECODER = "base VAE"  # what the settings say when the base model's own VAE decoder decodes

STATE_KEY, CONFIG_KEY = "model_state_dict", "config"
CONFIG_FIELDS = ("in_channels", "out_channels", "block_out_channels", "layers_per_block")
LATENT_CHANNELS = 4                # SD2.1's latent space
NORM_GROUPS = 32                   # the published GroupNorm groups (not visible in tensor shapes)
PREFIXES = ("conv_in.", "mid_block.", "up_blocks.", "conv_norm_out.", "conv_out.")
_FULL_VAE_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "first_stage_model.")
_RESNET = re.compile(r"^up_blocks\.(\d+)\.resnets\.(\d+)\.")
# attention tensor names of diffusers releases before 0.15 -> today's names
_LEGACY_ATTENTION = {"query.": "to_q.", "key.": "to_k.", "value.": "to_v.", "proj_attn.": "to_out.0."}

# This project's .safetensors form
FORMAT_MARKER = "pisa-sr-decoder"
FORMAT_VERSION = 1
MAX_PICKLE_BYTES = 16 * 2**20      # is_decoder_file reads at most this much of a torch zip's pickle
# Python's zipfile on a damaged archive raises these (NotImplementedError: an unknown zip version or
# compression method); pickletools on a damaged pickle raises ValueError.
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError, NotImplementedError)


@dataclass
class DecoderFile:
    """A loaded fast decoder: the diffusers Decoder (float32, CPU) and its inferred config."""

    decoder: Decoder
    config: dict
    source: str
    format: str  # "published-pth" (the torch.save dict) or "pisa-safetensors"

    @property
    def name(self) -> str:
        return Path(self.source).name


# ---------------------------------------------------------------------------------- recognising


def is_decoder_file(path) -> bool:
    """Whether a file looks like a fast decoder, judged from its content cheaply (no tensor is
    read, nothing is unpickled): a safetensors header with our marker or only Decoder tensor names,
    or a torch.save zip whose pickle names `model_state_dict` and Decoder tensors. For listing the
    candidates in a model folder; load_decoder checks everything. Never raises."""
    try:
        kind = sniff_file(path).kind
        if kind == SAFETENSORS:
            file = SafetensorsFile(path, WHAT)
            return file.metadata.get("format") == FORMAT_MARKER or _decoder_names(file.keys)
        if kind == TORCH_ZIP:
            return _zip_names_decoder(Path(path))
    except (PiSAError, *_ZIP_ERRORS, KeyError, IndexError):
        return False
    return False


def _decoder_names(keys) -> bool:
    keys = [k for k in keys if isinstance(k, str)]
    return bool(keys) and "conv_in.weight" in keys and all(k.startswith(PREFIXES) for k in keys)


def _zip_names_decoder(path: Path) -> bool:
    """The strings of a torch.save zip's pickle (its opcodes only) name the published layout. torch
    stores its records uncompressed and unencrypted; a record stored otherwise is not torch's."""
    with zipfile.ZipFile(path) as archive:
        pickles = [i for i in archive.infolist() if i.filename.endswith("/data.pkl") or i.filename == "data.pkl"]
        if len(pickles) != 1 or pickles[0].file_size > MAX_PICKLE_BYTES:
            return False
        record = pickles[0]
        if record.compress_type != zipfile.ZIP_STORED or record.flag_bits & 0x1:
            return False
        data = archive.read(record)
    strings = {arg for op, arg, _ in pickletools.genops(io.BytesIO(data)) if isinstance(arg, str)}
    return STATE_KEY in strings and "conv_in.weight" in strings and any(s.startswith("up_blocks.") for s in strings)


# ---------------------------------------------------------------------------------- loading


def load_decoder(path) -> DecoderFile:
    """Read a fast decoder: the published torch.save dict (torch.load(weights_only=True): no pickled
    code runs) or this project's .safetensors, judged by content. Its structure is inferred from the
    tensor shapes and checked against the stored config; every problem is one PiSAError line naming
    the file. Returns float32 CPU weights."""
    path = Path(path)
    if not path.is_file():
        raise PiSAError(f"Fast decoder file '{path}' does not exist or is not a file.")
    source = str(path)
    if is_safetensors(path, WHAT):
        file = SafetensorsFile(path, WHAT)
        config = _metadata_config(file.metadata, source)
        state, fmt = file.read_all(), "pisa-safetensors"
    else:
        data = load_pickle(path, WHAT)
        state, config = _published_parts(data, source)
        fmt = "published-pth"
    return build_decoder(state, config, source, fmt)


def _published_parts(data, source: str) -> tuple[dict, dict | None]:
    """(tensors, config) of the published dict; a bare state dict of Decoder names is taken too."""
    if not isinstance(data, dict):
        raise PiSAError(f"'{source}' holds {_a(type(data).__name__)}; expected {WHAT}: a dict with "
                        f"'{STATE_KEY}' and '{CONFIG_KEY}'.")
    if STATE_KEY not in data:
        tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors, None  # judged by its names below (a full VAE, a UNet, a bare Decoder ...)
        found = ", ".join(repr(k) for k in list(data)[:5]) or "none"
        raise PiSAError(f"'{source}' has no '{STATE_KEY}' (found keys: {found}); expected {WHAT}.")
    state, config = data[STATE_KEY], data.get(CONFIG_KEY)
    if not isinstance(state, dict):
        raise PiSAError(f"'{source}': '{STATE_KEY}' should be a dict of tensors, found {_a(type(state).__name__)}.")
    if config is not None and not isinstance(config, dict):
        raise PiSAError(f"'{source}': '{CONFIG_KEY}' should be a dict, found {_a(type(config).__name__)}.")
    return state, config


def _metadata_config(metadata: dict, source: str) -> dict | None:
    """The config stored as JSON in our metadata (None when absent: the shapes alone decide)."""
    text = metadata.get(CONFIG_KEY)
    try:
        config = None if text is None else json.loads(text)
    except ValueError:
        config = "not JSON"
    if config is not None and not isinstance(config, dict):
        raise PiSAError(f"'{source}': its '{CONFIG_KEY}' metadata is not a JSON object.")
    return config


def build_decoder(state: dict, config: dict | None, source: str, fmt: str = "state dict") -> DecoderFile:
    """A float32 CPU Decoder from Decoder-named tensors: layout judged from the names, structure
    from the shapes, `config` (when given) checked against them."""
    state = _check_layout(state, source)
    inferred = infer_config(state, source)
    if config is not None:
        _check_config(config, inferred, source)
    with torch.device("meta"):
        decoder = Decoder(in_channels=inferred["in_channels"], out_channels=inferred["out_channels"],
                          up_block_types=("UpDecoderBlock2D",) * len(inferred["block_out_channels"]),
                          block_out_channels=tuple(inferred["block_out_channels"]),
                          layers_per_block=inferred["layers_per_block"], norm_num_groups=inferred["norm_num_groups"],
                          act_fn="silu", mid_block_add_attention=inferred["mid_block_add_attention"])
    expected = {k: tuple(v.shape) for k, v in decoder.state_dict().items()}
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    if missing or extra:
        detail = f"lacks '{missing[0]}'" if missing else f"has an unexpected tensor '{extra[0]}'"
        raise PiSAError(f"'{source}' {detail} for a Decoder of widths {inferred['block_out_channels']} with "
                        f"{inferred['layers_per_block']} layers per block ({len(missing)} missing, {len(extra)} "
                        "unexpected): an unknown layout.")
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise PiSAError(f"'{source}': tensor '{key}' has shape {tuple(state[key].shape)}, but a Decoder of "
                            f"widths {inferred['block_out_channels']} needs {shape}.")
    # copies: a memory-mapped file's tensors would otherwise become the weights
    decoder.load_state_dict({k: v.to(torch.float32, copy=True) for k, v in state.items()}, assign=True)
    return DecoderFile(decoder.eval().requires_grad_(False), inferred, source, fmt)


def _check_layout(state: dict, source: str) -> dict:
    """Floating-point tensors under Decoder names (legacy attention names renamed); a full SD VAE,
    another model or an empty dict is named as such."""
    names = [k for k in state if isinstance(k, str)]
    if len(names) != len(state) or not names:
        raise PiSAError(f"'{source}' holds no tensors under string names; expected {WHAT}.")
    if any(k.startswith(_FULL_VAE_PREFIXES) for k in names):
        raise PiSAError(f"'{source}' is a full SD VAE (encoder and decoder, e.g. '{names[0]}'), not a fast decoder; "
                        "the base model's own VAE decoder needs no decoder file.")
    stray = [k for k in names if not k.startswith(PREFIXES)]
    if stray or "conv_in.weight" not in state:
        example = stray[0] if stray else names[0]
        raise PiSAError(f"'{source}' has an unknown layout (tensor '{example}'); expected the diffusers Decoder names "
                        f"{', '.join(p.rstrip('.') for p in PREFIXES)} of {WHAT}.")
    renamed = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            found = value.dtype if isinstance(value, torch.Tensor) else type(value).__name__
            raise PiSAError(f"'{source}': '{key}' should be a floating-point tensor, found {found}.")
        if key.startswith("mid_block.attentions."):
            for old, new in _LEGACY_ATTENTION.items():
                key = re.sub(rf"^(mid_block\.attentions\.\d+\.){re.escape(old)}", rf"\g<1>{new}", key)
        renamed[key] = value
    return renamed


def infer_config(state: dict, source: str) -> dict:
    """Latent and output channels, widths per level (encoder order, as diffusers' config), resnets
    per up block and whether the mid block has its attention, from the tensor shapes."""
    conv_in, conv_out = state["conv_in.weight"], state.get("conv_out.weight")
    if conv_in.ndim != 4 or conv_out is None or conv_out.ndim != 4:
        raise PiSAError(f"'{source}': conv_in.weight and conv_out.weight should be 4-D convolution weights; "
                        "an unknown layout.")
    latent = int(conv_in.shape[1])
    if latent != LATENT_CHANNELS:
        raise PiSAError(f"'{source}' decodes a {latent}-channel latent space; PiSA-SR works in SD2.1's "
                        f"{LATENT_CHANNELS}-channel latents (a decoder for another model).")
    resnets: dict[int, set[int]] = {}
    for key in state:
        match = _RESNET.match(key)
        if match:
            resnets.setdefault(int(match[1]), set()).add(int(match[2]))
    counts = {len(r) for r in resnets.values()}
    if not resnets or sorted(resnets) != list(range(len(resnets))) or len(counts) != 1:
        raise PiSAError(f"'{source}': its up blocks are not numbered 0, 1, ... with the same number of resnets "
                        "each; an unknown layout.")
    widths = []
    for block in range(len(resnets)):
        conv2 = state.get(f"up_blocks.{block}.resnets.0.conv2.weight")
        if conv2 is None or conv2.ndim != 4:
            raise PiSAError(f"'{source}' lacks the 4-D 'up_blocks.{block}.resnets.0.conv2.weight'; an unknown layout.")
        widths.append(int(conv2.shape[0]))
    if any(w % NORM_GROUPS for w in widths):
        raise PiSAError(f"'{source}': widths {widths[::-1]} are not multiples of the {NORM_GROUPS} GroupNorm "
                        "groups of the published decoder.")
    return {"in_channels": latent, "out_channels": int(conv_out.shape[0]), "block_out_channels": widths[::-1],
            "layers_per_block": counts.pop() - 1, "norm_num_groups": NORM_GROUPS,
            "mid_block_add_attention": any(k.startswith("mid_block.attentions.") for k in state)}


def _check_config(config: dict, inferred: dict, source: str) -> None:
    """Every known config field present must agree with the shapes (diffusers' names)."""
    for key, value in config.items():
        if key not in inferred:
            continue  # e.g. up_block_types: the shapes decide
        stored = list(value) if isinstance(value, (list, tuple)) else value
        if stored != inferred[key]:
            raise PiSAError(f"'{source}': its config says {key} {value!r}, but its tensors have "
                            f"{inferred[key]!r}; the file is inconsistent.")
    if config.get("act_fn", "silu") != "silu":
        raise PiSAError(f"'{source}': its config says act_fn {config['act_fn']!r}; the fast decoder uses SiLU.")


def _a(word: str) -> str:
    return ("an " if word[:1].lower() in "aeiou" else "a ") + word


# ---------------------------------------------------------------------------------- writing, describing


def save_decoder(decoder: DecoderFile, path) -> None:
    """This project's .safetensors: the Decoder's tensors (float32) and the config as JSON metadata."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise PiSAError(f"'{path}': a fast decoder is written as .safetensors; the name ends with '{path.suffix}'.")
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous().clone()
               for k, v in decoder.decoder.state_dict().items()}
    metadata = {"format": FORMAT_MARKER, "format_version": str(FORMAT_VERSION),
                CONFIG_KEY: json.dumps({k: decoder.config[k] for k in CONFIG_FIELDS})}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as handle:
        handle.write(save(tensors, metadata=metadata))


def convert_decoder(src, dst) -> DecoderFile:
    """`pisa-sr convert` for a decoder file: read (any form load_decoder reads), write .safetensors."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise PiSAError(f"Refusing to convert '{src}' onto itself; choose another output path.")
    decoder = load_decoder(src)
    save_decoder(decoder, dst)
    return decoder


def describe_decoder(decoder: DecoderFile) -> dict:
    """Summary for `pisa-sr info`."""
    return {"kind": "fast decoder", "format": decoder.format, "source": decoder.source,
            **{k: decoder.config[k] for k in (*CONFIG_FIELDS, "mid_block_add_attention")},
            "parameters": sum(p.numel() for p in decoder.decoder.parameters())}


def decoder_text(info: dict) -> str:
    """describe_decoder's summary as the lines `pisa-sr info` prints."""
    widths = ", ".join(str(w) for w in info["block_out_channels"])
    return (f"kind: {info['kind']}\nformat: {info['format']}\nsource: {info['source']}\n"
            f"latent channels: {info['in_channels']}, output channels: {info['out_channels']}\n"
            f"widths: {widths}; {info['layers_per_block'] + 1} resnets per up block; mid-block attention: "
            f"{'yes' if info['mid_block_add_attention'] else 'no'}\nparameters: {info['parameters']:,}")


def decoder_setting(decoder: DecoderFile | None):
    """What a settings record says about the decoder: the file's name and size, or BASE_DECODER."""
    if decoder is None:
        return BASE_DECODER
    path = Path(decoder.source)
    return {"file": decoder.name, "bytes": path.stat().st_size} if path.is_file() else decoder.source


def resolve(decoder) -> DecoderFile | None:
    """None, a path, or an already loaded DecoderFile -> DecoderFile or None."""
    if decoder is None or isinstance(decoder, DecoderFile):
        return decoder
    return load_decoder(decoder)


def attach(vae: torch.nn.Module, decoder: DecoderFile) -> None:
    """Make `vae` decode with the fast decoder: its decoder replaced (the base one is dropped) and
    no post_quant_conv, so vae.decode, the exact tiles and every decode front end use it."""
    vae.decoder = decoder.decoder
    vae.post_quant_conv = None
