"""The trainable pix and sem LoRAs: two peft adapters on the generator's UNet.

As in the authors' release (docs/release.md, "LoRA targets" and "Training"): one
`peft.LoraConfig(r, lora_alpha, init_lora_weights="gaussian", target_modules=...)` per LoRA, named
"pix" and "sem", on the modules of `pisa_core.model.lora.release_target_modules`. The layers are peft's;
this module only says which adapters are active and trainable, switches them all off (the same
weights then are the frozen base UNet of the CSD loss, no second UNet in memory), and reads and
writes a family as a `pisa_core.model.lora.LoRAFamily`.

peft's `set_adapter`/`enable_adapters` also set `requires_grad` of the adapters they touch; every
switch here re-applies the one trainable family afterwards, so a frozen LoRA stays frozen.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch
from torch import nn

from ..errors import PiSAError
from ..model.lora import FAMILIES, LoRAFamily, factor_shapes, lora_scale, release_target_modules

# --lora-init -> peft's init_lora_weights: "gaussian" is the release's (A ~ N(0, 1/r²), B = 0);
# "kaiming" is peft's default (A Kaiming-uniform, B = 0).
LORA_INITS = {"gaussian": "gaussian", "kaiming": True}


class UNetLoRA:
    """The peft LoRA layers of one UNet, by module name, with switches and factor I/O."""

    def __init__(self, unet: nn.Module, layers: dict[str, nn.Module], ranks: dict[str, int],
                 alphas: dict[str, float]):
        self.unet, self.layers = unet, layers
        self.ranks, self.alphas = dict(ranks), dict(alphas)
        self.trainable: str | None = None
        self._active = {f: True for f in FAMILIES}

    def pairs(self, family: str) -> dict[str, tuple[nn.Parameter, nn.Parameter]]:
        """The live (A, B) parameters of one family, by module name."""
        return {name: (layer.lora_A[family].weight, layer.lora_B[family].weight) for name, layer in self.layers.items()}

    def parameters(self, family: str) -> list[nn.Parameter]:
        return [p for pair in self.pairs(family).values() for p in pair]

    def set_trainable(self, family: str | None) -> None:
        """Only `family`'s factors get gradients (None: no LoRA does; the base UNet never does)."""
        self.trainable = family
        for f in FAMILIES:
            for p in self.parameters(f):
                p.requires_grad_(f == family)

    def active(self) -> dict[str, bool]:
        return dict(self._active)

    def set_active(self, **flags: bool) -> None:
        self._active.update({f: bool(on) for f, on in flags.items()})
        on = [f for f in FAMILIES if self._active[f]]
        for layer in self.layers.values():
            layer.enable_adapters(bool(on))
            if on:
                layer.set_adapter(on)
        self.set_trainable(self.trainable)  # undo peft's requires_grad changes

    @contextmanager
    def switched(self, **flags: bool):
        """Temporarily switch families on/off (all off = the frozen base UNet for CSD)."""
        before = self.active()
        self.set_active(**flags)
        try:
            yield
        finally:
            self.set_active(**before)

    def base_unet(self):
        """Context in which the UNet is the frozen base model (every LoRA off)."""
        return self.switched(**{f: False for f in FAMILIES})

    def place(self, device, dtype: torch.dtype) -> None:
        """Move the UNet to `device` with its base weights in `dtype`; the LoRA factors stay float32
        (fp16 training keeps trainable weights in full precision)."""
        self.unet.to(device)
        lora = {id(p) for f in FAMILIES for p in self.parameters(f)}
        with torch.no_grad():
            for p in self.unet.parameters():
                if id(p) not in lora and p.is_floating_point():
                    p.data = p.data.to(dtype)

    def family(self, family: str) -> LoRAFamily:
        """Current factors of one family as a LoRAFamily (float32, CPU)."""
        factors = {name: (A.detach().float().cpu().clone(), B.detach().float().cpu().clone())
                   for name, (A, B) in self.pairs(family).items()}
        return LoRAFamily(rank=self.ranks[family], alpha=self.alphas[family], factors=factors)

    def load_family(self, family: str, weights: LoRAFamily, source: str) -> None:
        """Copy a family's factors in; modules, shapes and scale must match the installed adapter."""
        missing = sorted(set(self.layers) - set(weights.factors))
        extra = sorted(set(weights.factors) - set(self.layers))
        if missing or extra:
            raise PiSAError(f"'{source}': the {family} LoRA targets do not match this UNet "
                            f"({len(missing)} modules missing, {len(extra)} unknown, e.g. {(missing + extra)[0]!r}).")
        if weights.scale != lora_scale(self.alphas[family], self.ranks[family]):
            raise PiSAError(f"'{source}': the {family} LoRA has scale {weights.scale:g}; this run uses "
                            f"{lora_scale(self.alphas[family], self.ranks[family]):g} "
                            f"(check --rank-{family} and --alpha-{family}).")
        with torch.no_grad():
            for name, (A, B) in self.pairs(family).items():
                new_A, new_B = weights.factors[name]
                expected = factor_shapes(self.layers[name].get_base_layer().weight.shape, self.ranks[family])
                if (tuple(new_A.shape), tuple(new_B.shape)) != expected:
                    raise PiSAError(f"'{source}': the {family} LoRA of '{name}' has shapes {tuple(new_A.shape)}/"
                                    f"{tuple(new_B.shape)}; this run expects {expected[0]}/{expected[1]} "
                                    f"(check --rank-{family}).")
                A.copy_(new_A)
                B.copy_(new_B)


def install_lora(unet: nn.Module, ranks: dict[str, int], alphas: dict[str, float], *, init: str = "gaussian",
                 seed: int = 0) -> UNetLoRA:
    """Inject the pix and sem adapters into every release target module, both active, none trainable.

    The initial A factors are drawn from a generator seeded with `seed` (the global torch RNG is
    left as it was); B factors are zero, so the UNet's output is unchanged until training moves B.
    The base weights are frozen."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    if init not in LORA_INITS:
        raise PiSAError(f"--lora-init must be one of {', '.join(LORA_INITS)}; got {init!r}.")
    unet.requires_grad_(False)
    names = release_target_modules(unet)
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        with warnings.catch_warnings():
            # the second adapter goes into the same model on purpose
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            for family in FAMILIES:
                config = LoraConfig(r=int(ranks[family]), lora_alpha=float(alphas[family]),
                                    init_lora_weights=LORA_INITS[init], target_modules=names)
                inject_adapter_in_model(config, unet, adapter_name=family)
    finally:
        torch.random.set_rng_state(state)
    layers = {name: m for name, m in unet.named_modules() if isinstance(m, BaseTunerLayer)}
    if set(layers) != set(names):
        raise PiSAError(f"peft adapted {len(layers)} UNet modules where the release targets {len(names)}.")
    for family in FAMILIES:
        scales = {layer.scaling[family] for layer in layers.values()}
        if scales != {lora_scale(alphas[family], ranks[family])}:
            raise PiSAError(f"peft scales the {family} LoRA by {sorted(scales)}, not alpha / rank = "
                            f"{lora_scale(alphas[family], ranks[family]):g}.")
    lora = UNetLoRA(unet, {name: layers[name] for name in names}, ranks, alphas)
    lora.set_active(**{f: True for f in FAMILIES})
    return lora

