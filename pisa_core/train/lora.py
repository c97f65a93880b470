"""Trainable pix/sem LoRA branches on the UNet's release target modules.

Each targeted nn.Linear / nn.Conv2d is replaced by a `DualLoRALayer` that keeps the frozen base
layer and two low-rank branches, y = W x + Σ_f on(f) · (α_f / r_f) · B_f(A_f(x)) (peft's LoRA,
facts: rank 4, alpha 8, scale 2). Branches can be switched off together, which turns the same
weights into the frozen base UNet for the CSD loss (no second copy of the UNet in memory).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from ..lora import LoRAFamily, release_target_modules
from ..errors import PiSAError

FAMILIES = ("pix", "sem")


class LoRABranch(nn.Module):
    """A (rank x in [x kh x kw]) and B (out x rank [x 1 x 1]) in float32; B starts at zero (peft init)."""

    def __init__(self, base: nn.Module, rank: int, alpha: float):
        super().__init__()
        self.rank, self.alpha, self.scale = int(rank), float(alpha), float(alpha) / int(rank)
        self.is_conv = isinstance(base, nn.Conv2d)
        if self.is_conv:
            a_shape = (rank, base.in_channels // base.groups, *base.kernel_size)
            b_shape = (base.out_channels, rank, 1, 1)
            self.stride, self.padding, self.dilation = base.stride, base.padding, base.dilation
        else:
            a_shape, b_shape = (rank, base.in_features), (base.out_features, rank)
        self.A = nn.Parameter(torch.empty(a_shape, dtype=torch.float32, device=base.weight.device))
        self.B = nn.Parameter(torch.zeros(b_shape, dtype=torch.float32, device=base.weight.device))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        A, B = self.A.to(x.dtype), self.B.to(x.dtype)
        if self.is_conv:
            h = F.conv2d(x, A, stride=self.stride, padding=self.padding, dilation=self.dilation)
            return F.conv2d(h, B) * self.scale
        return F.linear(F.linear(x, A), B) * self.scale


class DualLoRALayer(nn.Module):
    """A frozen Linear/Conv2d plus pix and sem LoRA branches, each switchable."""

    def __init__(self, base: nn.Module, ranks: dict[str, int], alphas: dict[str, float]):
        super().__init__()
        self.base = base
        self.branches = nn.ModuleDict({f: LoRABranch(base, ranks[f], alphas[f]) for f in FAMILIES})
        self.active = {f: True for f in FAMILIES}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        for family in FAMILIES:
            if self.active[family]:
                y = y + self.branches[family](x).to(y.dtype)
        return y


class UNetLoRA:
    """The LoRA layers installed in one UNet, by module name, with switches and factor I/O."""

    def __init__(self, unet: nn.Module, layers: dict[str, DualLoRALayer]):
        self.unet, self.layers = unet, layers

    def parameters(self, family: str) -> list[nn.Parameter]:
        return [p for layer in self.layers.values() for p in layer.branches[family].parameters()]

    def set_trainable(self, family: str) -> None:
        """Only `family`'s factors get gradients (the other family and the base stay frozen)."""
        for f in FAMILIES:
            for p in self.parameters(f):
                p.requires_grad_(f == family)

    def set_active(self, **flags: bool) -> None:
        for layer in self.layers.values():
            for family, on in flags.items():
                layer.active[family] = bool(on)

    def active(self) -> dict[str, bool]:
        first = next(iter(self.layers.values()))
        return dict(first.active)

    @contextmanager
    def switched(self, **flags: bool):
        """Temporarily switch families on/off (e.g. all off = the frozen base UNet for CSD)."""
        before = self.active()
        self.set_active(**flags)
        try:
            yield
        finally:
            self.set_active(**before)

    def family(self, family: str) -> LoRAFamily:
        """Current factors of one family as a checkpoint LoRAFamily (float32, CPU)."""
        first = next(iter(self.layers.values())).branches[family]
        factors = {
            name: (layer.branches[family].A.detach().float().cpu().clone(),
                   layer.branches[family].B.detach().float().cpu().clone())
            for name, layer in self.layers.items()
        }
        return LoRAFamily(rank=first.rank, alpha=first.alpha, factors=factors)

    def load_family(self, family: str, weights: LoRAFamily, source: str) -> None:
        """Copy a family's factors in; ranks and module set must match the installed layers."""
        missing = sorted(set(self.layers) - set(weights.factors))
        extra = sorted(set(weights.factors) - set(self.layers))
        if missing or extra:
            raise PiSAError(f"'{source}': the {family} LoRA targets do not match this UNet "
                            f"({len(missing)} modules missing, {len(extra)} unknown, e.g. {(missing + extra)[0]!r}).")
        with torch.no_grad():
            for name, layer in self.layers.items():
                branch = layer.branches[family]
                A, B = weights.factors[name]
                if tuple(A.shape) != tuple(branch.A.shape) or tuple(B.shape) != tuple(branch.B.shape):
                    raise PiSAError(f"'{source}': the {family} LoRA of '{name}' has shapes {tuple(A.shape)}/"
                                    f"{tuple(B.shape)}; this run expects {tuple(branch.A.shape)}/{tuple(branch.B.shape)} "
                                    f"(check --rank-{family}).")
                branch.A.copy_(A)
                branch.B.copy_(B)
                branch.scale = float(weights.alpha) / int(weights.rank)
                branch.alpha = float(weights.alpha)


def install_lora(unet: nn.Module, ranks: dict[str, int], alphas: dict[str, float], seed: int = 0) -> UNetLoRA:
    """Replace every release target module (checkpoint.release_target_modules) with a DualLoRALayer.

    A factors get peft's Kaiming-uniform init from a generator seeded with `seed`, B factors zero,
    so the UNet's output is unchanged until training moves B. The base weights are frozen."""
    unet.requires_grad_(False)  # the base weights are always frozen
    names = release_target_modules(unet)
    modules = dict(unet.named_modules())
    layers = {}
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for name in names:
            base = modules[name]
            if not isinstance(base, (nn.Linear, nn.Conv2d)):
                raise PiSAError(f"UNet module '{name}' is a {type(base).__name__}; LoRA needs Linear or Conv2d.")
            layer = DualLoRALayer(base, ranks, alphas)
            parent_name, _, child = name.rpartition(".")
            setattr(modules[parent_name] if parent_name else unet, child, layer)
            layers[name] = layer
    finally:
        torch.random.set_rng_state(state)
    return UNetLoRA(unet, layers)


def zero_family(like: LoRAFamily) -> LoRAFamily:
    """A family with the same modules and rank whose factors are all zero (no effect on the UNet)."""
    return LoRAFamily(rank=like.rank, alpha=like.alpha,
                      factors={n: (torch.zeros_like(A), torch.zeros_like(B)) for n, (A, B) in like.factors.items()})
