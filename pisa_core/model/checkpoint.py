"""PiSA-SR LoRA weights: the authors' `pisa_sr.pkl` (read safely, and written), this project's
`.safetensors`, and the weights in a training state (read for `pisa-sr convert`).

The official file's layout: docs/release.md, "Weights file".
Two adapter families, "pix" and "sem", each a set of LoRA factor pairs (A, B) keyed by diffusers
UNet module name. The official pickle is only ever read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save

from ..errors import PiSAError
from ..files.atomic import atomic_output
from ..files.tensors import SafetensorsFile, is_name, is_safetensors, load_pickle
from ..files.torch_pickles import is_torch_zip, zip_pickle
from .lora import (
    FAMILIES,
    GROUPS,
    PEFT_DEFAULT_ALPHA,
    LoRAFamily,
    adapted_weight_shape,
    module_group,
    module_kind,
    zero_family,
)

WHAT = "PiSA-SR weights"

# Our safetensors format: tensors "<family>.<module>.lora_A|lora_B", string metadata below.
FORMAT_MARKER = "pisa-sr-lora"
FORMAT_VERSION = 1
META_FORMAT = "format"
META_VERSION = "format_version"

OFFICIAL_STATE_KEY = "state_dict_unet"
OFFICIAL_RANK_KEYS = {family: f"lora_rank_unet_{family}" for family in FAMILIES}
OFFICIAL_LIST_KEYS = {
    (family, group): f"unet_lora_{group}_modules_{family}" for family in FAMILIES for group in GROUPS
}
OFFICIAL_KEYS = (*OFFICIAL_LIST_KEYS.values(), *OFFICIAL_RANK_KEYS.values(), OFFICIAL_STATE_KEY)

_OFFICIAL_TENSOR = re.compile(
    r"^(?P<module>.+)\.lora_(?P<factor>[AB])\.default_(?P<group>encoder|decoder|others)_(?P<family>pix|sem)\.weight$"
)
_OUR_TENSOR = re.compile(r"^(?P<family>pix|sem)\.(?P<module>.+)\.lora_(?P<factor>[AB])$")

_SD_CHECKPOINT_PREFIXES = ("model.diffusion_model.", "first_stage_model.", "cond_stage_model.", "conditioner.")
_DIFFUSERS_PREFIXES = ("conv_in.", "down_blocks.", "mid_block.", "up_blocks.", "time_embedding.", "encoder.", "decoder.")


@dataclass
class PiSAWeights:
    """Both families of PiSA-SR weights and where they came from.

    format: "official-pkl" (pisa_sr.pkl), "official-safetensors" (the official tensor names stored
    in a safetensors file), "pisa-safetensors" (this project's file) or "training-state" (the
    train.pt of a resumable training state, read by `pisa-sr convert`).
    """

    pix: LoRAFamily
    sem: LoRAFamily
    format: str
    source: str | None = None

    def family(self, name: str) -> LoRAFamily:
        return {"pix": self.pix, "sem": self.sem}[name]


# ---------------------------------------------------------------- validation shared by all formats


def _factor(tensor, source: str, label: str) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise PiSAError(f"'{source}': {label} should be a tensor, found {type(tensor).__name__}.")
    if not tensor.is_floating_point():
        raise PiSAError(f"'{source}': {label} should be a floating-point tensor, found {tensor.dtype}.")
    return tensor.detach().to(device="cpu", dtype=torch.float32).contiguous()


def _check_pair(A: torch.Tensor, B: torch.Tensor, rank: int, rank_origin: str, source: str, where: str) -> None:
    if A.ndim not in (2, 4):
        raise PiSAError(
            f"'{source}': lora_A of {where} has shape {tuple(A.shape)}; expected (r, in) or (r, in, kh, kw)."
        )
    if A.shape[0] != rank:
        raise PiSAError(f"'{source}': lora_A of {where} has rank {A.shape[0]}, but {rank_origin} is {rank}.")
    expected_b = "(out, r)" if A.ndim == 2 else "(out, r, 1, 1)"
    if B.ndim != A.ndim or (A.ndim == 4 and tuple(B.shape[2:]) != (1, 1)):
        raise PiSAError(
            f"'{source}': lora_B of {where} has shape {tuple(B.shape)}; with lora_A of shape "
            f"{tuple(A.shape)} it should be {expected_b}."
        )
    if B.shape[1] != rank:
        raise PiSAError(f"'{source}': lora_B of {where} has rank {B.shape[1]}, but {rank_origin} is {rank}.")


def make_family(family: str, rank, alpha, pairs: dict, source: str, rank_origin: str) -> LoRAFamily:
    """Validate one family's (A, B) pairs against its rank and return it as float32 CPU tensors."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise PiSAError(f"'{source}': the {family} rank should be a positive int, found {rank!r}.")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise PiSAError(f"'{source}': the {family} alpha should be a positive number, found {alpha!r}.")
    if not pairs:
        raise PiSAError(f"'{source}' holds no {family} LoRA tensors; expected both a pix and a sem family.")
    factors = {}
    for module, (a, b) in pairs.items():
        if not is_name(module) or not module:
            shown = f"{module!r:.80}" if isinstance(module, str) else _kind_of(module)
            raise PiSAError(f"'{source}': a {family} module name should be a non-empty printable str, found {shown}.")
        where = f"{family} module '{module}'"
        A = _factor(a, source, f"lora_A of {where}")
        B = _factor(b, source, f"lora_B of {where}")
        _check_pair(A, B, rank, rank_origin, source, where)
        factors[module] = (A, B)
    return LoRAFamily(rank=rank, alpha=float(alpha), factors=factors)


def _pairs_from_parts(parts: dict, source: str, family: str) -> dict:
    """{module: {"A": t, "B": t}} -> {module: (A, B)}; each module needs both factors."""
    pairs = {}
    for module, factors in parts.items():
        for factor in ("A", "B"):
            if factor not in factors:
                raise PiSAError(f"'{source}' has lora_{'B' if factor == 'A' else 'A'} but no lora_{factor} "
                                f"for {family} module '{module}'.")
        pairs[module] = (factors["A"], factors["B"])
    return pairs


def _inferred_rank(pairs: dict, family: str, source: str) -> int:
    if not pairs:
        raise PiSAError(f"'{source}' holds no {family} LoRA tensors; expected both a pix and a sem family.")
    first_a = next(iter(pairs.values()))[0]
    if getattr(first_a, "ndim", 0) not in (2, 4):
        raise PiSAError(f"'{source}': a {family} lora_A has shape {tuple(first_a.shape)}; expected 2 or 4 dims.")
    return int(first_a.shape[0])


# ---------------------------------------------------------------- official pisa_sr.pkl


def _weights_from_official_dict(data, source: str) -> PiSAWeights:
    """Check the 9-key schema of pisa_sr.pkl (docs/release.md, "Weights file") and build both families from it."""
    if not isinstance(data, dict):
        raise PiSAError(f"'{source}' holds a {type(data).__name__}; expected the dict of the official pisa_sr.pkl.")
    missing = [key for key in OFFICIAL_KEYS if key not in data]
    if missing:
        found = ", ".join(repr(k) for k in list(data)[:5]) or "none"
        raise PiSAError(
            f"'{source}' lacks key(s) {', '.join(repr(k) for k in missing)} of the official pisa_sr.pkl "
            f"(found keys: {found})."
        )
    for key in OFFICIAL_LIST_KEYS.values():
        value = data[key]
        if not isinstance(value, list) or not all(is_name(v) for v in value):
            raise PiSAError(f"'{source}': key '{key}' should be a list of module names (printable str), found "
                            f"{_kind_of(value)}.")
    for key in OFFICIAL_RANK_KEYS.values():
        value = data[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            shown = repr(value) if isinstance(value, int) else _kind_of(value)
            raise PiSAError(f"'{source}': key '{key}' should be a positive int rank, found {shown}.")
    state = data[OFFICIAL_STATE_KEY]
    if not isinstance(state, dict):
        raise PiSAError(f"'{source}': key '{OFFICIAL_STATE_KEY}' should be a dict of tensors, found {_kind_of(state)}.")
    parts = _parse_official_tensors(state, source)
    families = {}
    for family in FAMILIES:
        lists = {group: data[OFFICIAL_LIST_KEYS[(family, group)]] for group in GROUPS}
        ordered = _match_lists(family, lists, parts, source)
        rank = data[OFFICIAL_RANK_KEYS[family]]
        families[family] = make_family(
            family, rank, PEFT_DEFAULT_ALPHA, ordered, source, f"'{OFFICIAL_RANK_KEYS[family]}'"
        )
    return PiSAWeights(pix=families["pix"], sem=families["sem"], format="official-pkl", source=source)


def _kind_of(value) -> str:
    if isinstance(value, list):
        inner = sorted({type(v).__name__ for v in value})
        return f"a list of {'/'.join(inner)}" if inner else "an empty list"
    return f"a {type(value).__name__}"


def _parse_official_tensors(state: dict, source: str) -> dict:
    """`<module>.lora_A|B.default_<group>_<family>.weight` -> {(family, group): {module: {A, B}}}."""
    parts: dict = {(family, group): {} for family in FAMILIES for group in GROUPS}
    for name, tensor in state.items():
        match = _OFFICIAL_TENSOR.match(name) if isinstance(name, str) else None
        if match is None:
            shown = repr(name) if isinstance(name, str) else _kind_of(name)
            raise PiSAError(
                f"'{source}': tensor name {shown} is not of the form "
                "'<module>.lora_A|lora_B.default_<encoder|decoder|others>_<pix|sem>.weight'."
            )
        if not isinstance(tensor, torch.Tensor):
            raise PiSAError(f"'{source}': entry '{name}' should be a tensor, found {type(tensor).__name__}.")
        bucket = parts[(match["family"], match["group"])]
        bucket.setdefault(match["module"], {})[match["factor"]] = tensor
    return parts


def _match_lists(family: str, lists: dict, parts: dict, source: str) -> dict:
    """Cross-check the module lists against the tensors of each adapter; return {module: (A, B)}
    in list order (encoder, decoder, others)."""
    ordered = {}
    for group in GROUPS:
        key = OFFICIAL_LIST_KEYS[(family, group)]
        listed = lists[group]
        tensors = _pairs_from_parts(parts[(family, group)], source, family)
        adapter = f"default_{group}_{family}"
        for module in listed:
            if module in ordered:
                raise PiSAError(f"'{source}': module '{module}' is listed twice in the {family} module lists.")
            if module not in tensors:
                raise PiSAError(f"'{source}': module '{module}' is listed in '{key}' but has no '{adapter}' tensors.")
            ordered[module] = tensors[module]
        for module in tensors:
            if module not in listed:
                raise PiSAError(f"'{source}': module '{module}' has '{adapter}' tensors but is not listed in '{key}'.")
    return ordered


# ---------------------------------------------------------------- safetensors (ours or official names)


def _weights_from_safetensors(path: Path) -> PiSAWeights:
    """Detect the format from the tensor names (SAFETENSORS_FORMATS, first rule that claims every
    name) and read it."""
    file = SafetensorsFile(path, WHAT)
    tensors, metadata, source = file.read_all(), file.metadata, str(path)
    keys = list(tensors)
    for _name, pattern, read in SAFETENSORS_FORMATS:
        if keys and all(pattern.match(k) for k in keys):
            return read(tensors, metadata, source)
    claimed = [k for k in keys if any(pattern.match(k) for _, pattern, _ in SAFETENSORS_FORMATS)]
    if claimed:
        other = next(k for k in keys if k not in set(claimed))
        raise PiSAError(
            f"'{source}' mixes PiSA-SR LoRA tensors with {len(keys) - len(claimed)} other "
            f"tensor(s) such as '{other}'; expected PiSA-SR LoRA tensors only."
        )
    raise PiSAError(
        f"'{source}' is not PiSA-SR weights: it looks like {_guess_contents(keys)}; expected the pix/sem "
        "LoRA of pisa_sr.pkl or a file written by `pisa-sr convert`."
    )


def _guess_contents(keys: list[str]) -> str:
    if not keys:
        return "an empty file (no tensors)"
    sample = f"{len(keys)} tensors, e.g. '{keys[0]}'"
    if any(k.startswith(_SD_CHECKPOINT_PREFIXES) for k in keys):
        return f"a Stable Diffusion checkpoint ({sample})"
    lora = [k for k in keys if "lora" in k.lower()]
    if lora:
        return f"a LoRA in another format ({len(keys)} tensors, e.g. '{lora[0]}')"
    if any(k.startswith(_DIFFUSERS_PREFIXES) for k in keys):
        return f"a diffusers model state dict ({sample})"
    return f"an unrecognised set of tensors ({sample})"


def _weights_from_official_tensors(tensors: dict, metadata: dict, source: str) -> PiSAWeights:
    """The release's tensor names stored in safetensors: groups from adapter names, rank from shapes."""
    parts = _parse_official_tensors(tensors, source)
    families = {}
    for family in FAMILIES:
        pairs = {}
        for group in GROUPS:
            for module, pair in _pairs_from_parts(parts[(family, group)], source, family).items():
                if module in pairs:
                    raise PiSAError(f"'{source}': {family} module '{module}' appears in two adapters.")
                pairs[module] = pair
        rank = _inferred_rank(pairs, family, source)
        families[family] = make_family(family, rank, PEFT_DEFAULT_ALPHA, pairs, source, "its other modules' rank")
    return PiSAWeights(pix=families["pix"], sem=families["sem"], format="official-safetensors", source=source)


def _weights_from_our_tensors(tensors: dict, metadata: dict, source: str) -> PiSAWeights:
    """Our keys; ranks and targets inferred from the tensors and cross-checked with the metadata."""
    marker = metadata.get(META_FORMAT)
    if marker is not None and marker != FORMAT_MARKER:
        raise PiSAError(f"'{source}': metadata format is {marker!r}; expected {FORMAT_MARKER!r}.")
    version = _meta_int(metadata, META_VERSION, source)
    if version is not None and version > FORMAT_VERSION:
        raise PiSAError(
            f"'{source}' uses format version {version}, newer than the supported {FORMAT_VERSION}; update PiSA-SR."
        )
    parts: dict = {family: {} for family in FAMILIES}
    for key, tensor in tensors.items():
        match = _OUR_TENSOR.match(key)
        parts[match["family"]].setdefault(match["module"], {})[match["factor"]] = tensor
    families = {}
    for family in FAMILIES:
        pairs = _pairs_from_parts(parts[family], source, family)
        rank = _inferred_rank(pairs, family, source)
        declared = _meta_int(metadata, f"{family}.rank", source)
        if declared is not None and declared != rank:
            raise PiSAError(f"'{source}': metadata says {family} rank {declared}, but the tensors have rank {rank}.")
        pairs = _order_by_metadata_targets(pairs, metadata, family, source)
        alpha = _meta_float(metadata, f"{family}.alpha", source)
        alpha = PEFT_DEFAULT_ALPHA if alpha is None else alpha
        families[family] = make_family(family, rank, alpha, pairs, source, "its other modules' rank")
    return PiSAWeights(pix=families["pix"], sem=families["sem"], format="pisa-safetensors", source=source)


# The safetensors layouts we read, as rules over the tensor names, beside their readers.
SAFETENSORS_FORMATS = (
    ("pisa-safetensors", _OUR_TENSOR, _weights_from_our_tensors),             # `pisa-sr convert`, training
    ("official-safetensors", _OFFICIAL_TENSOR, _weights_from_official_tensors),  # pisa_sr.pkl's names
)


def _order_by_metadata_targets(pairs: dict, metadata: dict, family: str, source: str) -> dict:
    key = f"{family}.target_modules"
    if key not in metadata:
        return pairs
    try:
        targets = json.loads(metadata[key])
    except json.JSONDecodeError:
        targets = None
    if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
        raise PiSAError(f"'{source}': metadata '{key}' should be a JSON list of module names.")
    if len(set(targets)) != len(targets) or set(targets) != set(pairs):
        extra = sorted(set(targets) - set(pairs))
        absent = sorted(set(pairs) - set(targets))
        detail = f"listed without tensors: {extra[:3]}" if extra else f"tensors not listed: {absent[:3]}"
        if not extra and not absent:
            detail = "a module is listed twice"
        raise PiSAError(f"'{source}': metadata '{key}' does not match the {family} tensors ({detail}).")
    return {module: pairs[module] for module in targets}


def _meta_int(metadata: dict, key: str, source: str) -> int | None:
    if key not in metadata:
        return None
    try:
        return int(metadata[key])
    except ValueError:
        raise PiSAError(f"'{source}': metadata '{key}' should be an integer, found {metadata[key]!r}.") from None


def _meta_float(metadata: dict, key: str, source: str) -> float | None:
    if key not in metadata:
        return None
    try:
        value = float(metadata[key])
    except ValueError:
        raise PiSAError(f"'{source}': metadata '{key}' should be a number, found {metadata[key]!r}.") from None
    return value


# ---------------------------------------------------------------- public entry points


def load_pisa_weights(path) -> PiSAWeights:
    """Read PiSA-SR weights: the official pisa_sr.pkl (safely) or a safetensors file (ours or with
    the official tensor names). The format is judged from the content, not the extension."""
    path = Path(path)
    if not path.is_file():
        raise PiSAError(f"PiSA-SR weights file '{path}' does not exist or is not a file.")
    if is_safetensors(path, WHAT):
        return _weights_from_safetensors(path)
    return _weights_from_official_dict(load_pickle(path, WHAT), str(path))


def looks_like_pisa_weights(path) -> bool:
    """Whether a file holds PiSA-SR weights, judged from its keys without loading it: a safetensors
    header whose tensor names all follow one of SAFETENSORS_FORMATS, or a torch.save zip whose
    pickle names the nine keys of pisa_sr.pkl (nothing is unpickled). An unreadable file is not."""
    path = Path(path)
    try:
        if is_safetensors(path, WHAT):
            keys = SafetensorsFile(path, WHAT).keys
            return bool(keys) and any(all(pattern.match(k) for k in keys) for _, pattern, _ in SAFETENSORS_FORMATS)
        data = zip_pickle(path, WHAT) if is_torch_zip(path) else b""
    except (OSError, PiSAError):
        return False
    return all(key.encode() in data for key in OFFICIAL_KEYS)


def save_pisa_weights(weights: PiSAWeights, path) -> None:
    """Write our .safetensors: tensors '<family>.<module>.lora_A|lora_B' plus string metadata
    (format marker and version, rank, alpha and target module list per family)."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise PiSAError(f"PiSA-SR weights can only be saved as .safetensors; got '{path}'.")
    target = str(path)
    tensors = {}
    metadata = {META_FORMAT: FORMAT_MARKER, META_VERSION: str(FORMAT_VERSION)}
    for name in FAMILIES:
        family = weights.family(name)
        checked = make_family(name, family.rank, family.alpha, family.factors, target, "the family's rank")
        for module, (A, B) in checked.factors.items():
            tensors[f"{name}.{module}.lora_A"] = A.clone()
            tensors[f"{name}.{module}.lora_B"] = B.clone()
        metadata[f"{name}.rank"] = str(checked.rank)
        metadata[f"{name}.alpha"] = repr(float(checked.alpha))
        metadata[f"{name}.target_modules"] = json.dumps(list(checked.factors))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as f:
        f.write(save(tensors, metadata=metadata))


def official_pisa_dict(weights: PiSAWeights, target: str = "the official pisa_sr.pkl") -> dict:
    """The 9-key dict of the release's pisa_sr.pkl (docs/release.md, "Weights file"): module lists
    per family and group, the two ranks and `state_dict_unet`, float32 CPU tensors.

    The layout stores no alpha: its readers scale by peft's default, 8 / rank. A family with
    another alpha is written with B multiplied by alpha / 8, so ΔW = (alpha / r)·B·A is unchanged."""
    families = {}
    for name in FAMILIES:
        family = weights.family(name)
        families[name] = make_family(name, family.rank, family.alpha, family.factors, target, "the family's rank")
    data: dict = {}
    for name, family in families.items():
        for group in GROUPS:
            data[OFFICIAL_LIST_KEYS[(name, group)]] = [m for m in family.factors if module_group(m) == group]
    for name, family in families.items():
        data[OFFICIAL_RANK_KEYS[name]] = int(family.rank)
    data[OFFICIAL_STATE_KEY] = _official_state(families)
    return data


def _official_state(families: dict) -> dict:
    """`<module>.lora_A|B.default_<group>_<family>.weight` in the order of a peft UNet's parameters:
    module by module, its A factors then its B factors, pix before sem."""
    modules = list(dict.fromkeys(m for family in families.values() for m in family.factors))
    state = {}
    for module in modules:
        adapters = {name: f"default_{module_group(module)}_{name}" for name in families}
        for index, factor in enumerate(("A", "B")):
            for name, family in families.items():
                if module in family.factors:
                    tensor = family.factors[module][index]
                    if factor == "B":
                        tensor = tensor * (family.alpha / PEFT_DEFAULT_ALPHA)
                    state[f"{module}.lora_{factor}.{adapters[name]}.weight"] = tensor.clone()
    return state


def save_official_pkl(weights: PiSAWeights, path) -> None:
    """Write the release's pisa_sr.pkl layout (torch.save zip format; strings, ints and tensors
    only, so torch.load(weights_only=True) reads it)."""
    path = Path(path)
    if path.suffix.lower() != ".pkl":
        raise PiSAError(f"The official PiSA-SR layout is saved as .pkl; got '{path}'.")
    data = official_pisa_dict(weights, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as f:
        torch.save(data, f)


# Writable formats: name (`--save-format`) -> (file suffix, writer).
WEIGHT_WRITERS = {
    "ours": (".safetensors", save_pisa_weights),
    "official": (".pkl", save_official_pkl),
}


def writer_for(path) -> Callable[[PiSAWeights, Path], None]:
    """The writer the file name asks for: .safetensors (ours) or .pkl (the official layout)."""
    suffix = Path(path).suffix.lower()
    for wanted, writer in WEIGHT_WRITERS.values():
        if suffix == wanted:
            return writer
    raise PiSAError(f"'{path}': PiSA-SR weights are written as .safetensors (this project's format) or .pkl "
                    f"(the official pisa_sr.pkl layout); the name ends with '{Path(path).suffix}'.")


# ----------------------------------------------------------------------------- training states
# `pisa-sr train` writes them (train/state.py); reading their weights lives here, with the other
# weight formats, so that the weights never import the training code.

TRAIN_STATE_FILE = "train.pt"
# what train.state.save_train_state writes besides the optimizer, scheduler and scaler
TRAIN_STATE_KEYS = ("step", "stage", "config", "lora")


def stage_weights(stage: str, pix: LoRAFamily, sem: LoRAFamily) -> PiSAWeights:
    """Both adapters of a run; after the pix stage the (untrained) sem family is written as zeros."""
    if stage == "pix":
        sem = zero_family(sem)
    return PiSAWeights(pix=pix, sem=sem, format="pisa-safetensors", source=None)


def is_train_state(data) -> bool:
    return isinstance(data, dict) and all(key in data for key in TRAIN_STATE_KEYS)


def weights_from_train_state(data: dict, source: str) -> PiSAWeights:
    """The weights a training state holds (what the run would write at that step): factors from
    its "lora" entry, rank from their shapes, alpha from its config."""
    try:
        config = json.loads(data["config"])
        found = {}
        for family in FAMILIES:
            pairs = data["lora"][family]
            if not all(isinstance(pair, dict) for pair in pairs.values()):
                raise TypeError(family)
            factors = {module: (pair["A"], pair["B"]) for module, pair in pairs.items()}
            rank = int(next(iter(factors.values()))[0].shape[0])
            found[family] = (rank, float(config[f"alpha_{family}"]), factors)
    except (TypeError, KeyError, ValueError, AttributeError, IndexError, StopIteration):
        raise PiSAError(f"'{source}' looks like a training state but its LoRA factors or config cannot be read; "
                        "expected the train.pt of a checkpoints/state_stepNNNNNN folder.") from None
    families = {family: make_family(family, rank, alpha, factors, source, "its other modules' rank")
                for family, (rank, alpha, factors) in found.items()}
    weights = stage_weights(data["stage"], families["pix"], families["sem"])
    weights.format, weights.source = "training-state", source
    return weights


def load_convertible(path) -> PiSAWeights:
    """What `pisa-sr convert` reads: PiSA-SR weights in any format load_pisa_weights reads, or a
    resumable training state (a checkpoints/state_stepNNNNNN folder or its train.pt)."""
    path = Path(path)
    if path.is_dir() and (path / TRAIN_STATE_FILE).is_file():
        path = path / TRAIN_STATE_FILE
    if not path.is_file() or is_safetensors(path, WHAT):
        return load_pisa_weights(path)
    data = load_pickle(path, WHAT)
    if is_train_state(data):
        return weights_from_train_state(data, str(path))
    return _weights_from_official_dict(data, str(path))


def convert_pisa_weights(src, dst) -> PiSAWeights:
    """Convert PiSA-SR weights or a training state to the format `dst`'s suffix names (.safetensors:
    ours; .pkl: the official layout); returns the weights read."""
    src, dst = Path(src), Path(dst)
    write = writer_for(dst)
    if dst.exists() and src.exists() and os.path.samefile(src, dst):
        raise PiSAError(f"Refusing to convert '{src}' onto itself; choose another output path.")
    weights = load_convertible(src)
    write(weights, dst)
    return weights


def check_compatible(weights: PiSAWeights, unet: torch.nn.Module, source_name) -> None:
    """Every LoRA module must exist in the UNet with the weight shape its factors imply."""
    modules = dict(unet.named_modules())
    for name in FAMILIES:
        for module, (A, B) in weights.family(name).factors.items():
            target = modules.get(module)
            weight = getattr(target, "weight", None) if target is not None else None
            if not isinstance(weight, torch.Tensor):
                raise PiSAError(
                    f"'{source_name}' has {name} LoRA weights for module '{module}', which the base UNet does "
                    "not have (weights made for another base model?)."
                )
            needed = adapted_weight_shape(A, B)
            if tuple(weight.shape) != needed:
                raise PiSAError(
                    f"'{source_name}': {name} LoRA for module '{module}' needs a base weight of shape {needed}, "
                    f"but the UNet's is {tuple(weight.shape)} (weights made for another base model?)."
                )


def describe(weights: PiSAWeights) -> dict:
    """Summary for `pisa-sr info`: format, and per family rank/alpha/scale, module counts per group
    and per kind, parameter count; plus the total parameter count."""
    families = {}
    for name in FAMILIES:
        family = weights.family(name)
        groups = dict.fromkeys(GROUPS, 0)
        kinds: dict[str, int] = {}
        parameters = 0
        for module, (A, B) in family.factors.items():
            groups[module_group(module)] += 1
            kind = module_kind(A)
            kinds[kind] = kinds.get(kind, 0) + 1
            parameters += A.numel() + B.numel()
        families[name] = {
            "rank": family.rank,
            "alpha": family.alpha,
            "scale": family.scale,
            "modules": len(family.factors),
            "groups": groups,
            "kinds": dict(sorted(kinds.items())),
            "parameters": parameters,
        }
    return {
        "format": weights.format,
        "source": weights.source,
        "families": families,
        "parameters": sum(f["parameters"] for f in families.values()),
    }
