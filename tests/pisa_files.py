"""Writers of PiSA-SR weight files for tests: the official pisa_sr.pkl layout and our .safetensors.

Random non-zero factors (trained weights are non-zero) on the release's target modules of a given
UNet, so a mix-up of modules, factors or scales changes results.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pisa_core.model.checkpoint import (
    OFFICIAL_LIST_KEYS,
    OFFICIAL_RANK_KEYS,
    OFFICIAL_STATE_KEY,
    PiSAWeights,
    save_pisa_weights,
)
from pisa_core.model.lora import FAMILIES, GROUPS, PEFT_DEFAULT_ALPHA, LoRAFamily, module_group, release_target_modules


def random_factors(unet: torch.nn.Module, rank: int, generator: torch.Generator) -> dict:
    """{module: (A, B)} for every release target of `unet`, shaped as peft's LoRA layers."""
    modules = dict(unet.named_modules())
    factors = {}
    for name in release_target_modules(unet):
        weight = modules[name].weight
        out_features, in_features = weight.shape[:2]
        kernel = tuple(weight.shape[2:])
        a_shape = (rank, in_features, *kernel)
        b_shape = (out_features, rank, *((1, 1) if kernel else ()))
        A = torch.randn(a_shape, generator=generator) / in_features**0.5
        B = 0.1 * torch.randn(b_shape, generator=generator) / rank**0.5
        factors[name] = (A, B)
    return factors


def _ranks(rank: int, rank_sem: int | None) -> dict:
    return {"pix": rank, "sem": rank if rank_sem is None else rank_sem}


def official_pisa_dict(unet: torch.nn.Module, rank: int = 4, seed: int = 0, rank_sem: int | None = None) -> dict:
    """The 9-key dict of the release's pisa_sr.pkl (docs/release.md, "Weights file")."""
    generator = torch.Generator().manual_seed(seed)
    ranks = _ranks(rank, rank_sem)
    data: dict = {}
    state: dict = {}
    for family in FAMILIES:
        factors = random_factors(unet, ranks[family], generator)
        for group in GROUPS:
            data[OFFICIAL_LIST_KEYS[(family, group)]] = [m for m in factors if module_group(m) == group]
        for module, (A, B) in factors.items():
            adapter = f"default_{module_group(module)}_{family}"
            state[f"{module}.lora_A.{adapter}.weight"] = A
            state[f"{module}.lora_B.{adapter}.weight"] = B
    for family in FAMILIES:
        data[OFFICIAL_RANK_KEYS[family]] = int(ranks[family])
    data[OFFICIAL_STATE_KEY] = state
    return data


def write_official_pkl(unet: torch.nn.Module, path, rank: int = 4, seed: int = 0, rank_sem: int | None = None) -> dict:
    """Write a pisa_sr.pkl like the release's (torch.save zip format); returns the saved dict."""
    data = official_pisa_dict(unet, rank=rank, seed=seed, rank_sem=rank_sem)
    torch.save(data, Path(path))
    return data


def random_pisa_weights(unet: torch.nn.Module, rank: int = 4, seed: int = 0, rank_sem: int | None = None,
                        alpha: float = PEFT_DEFAULT_ALPHA, alpha_sem: float | None = None) -> PiSAWeights:
    generator = torch.Generator().manual_seed(seed)
    ranks = _ranks(rank, rank_sem)
    alphas = {"pix": alpha, "sem": alpha if alpha_sem is None else alpha_sem}
    families = {
        family: LoRAFamily(rank=ranks[family], alpha=alphas[family],
                           factors=random_factors(unet, ranks[family], generator))
        for family in FAMILIES
    }
    return PiSAWeights(pix=families["pix"], sem=families["sem"], format="pisa-safetensors", source=None)


def write_pisa_safetensors(unet: torch.nn.Module, path, rank: int = 4, seed: int = 0, rank_sem: int | None = None,
                           alpha: float = PEFT_DEFAULT_ALPHA, alpha_sem: float | None = None) -> PiSAWeights:
    """Write our .safetensors through save_pisa_weights; returns the weights written."""
    weights = random_pisa_weights(unet, rank=rank, seed=seed, rank_sem=rank_sem, alpha=alpha, alpha_sem=alpha_sem)
    save_pisa_weights(weights, path)
    return weights
