"""The two PiSA-SR LoRAs on one UNet weight set.

The release keeps three full copies of the UNet weights to switch between ε_pix and ε_PiSA. Here
the UNet holds one set, W_PiSA = W0 + Δ_pix + Δ_sem (merged once at load), and each LoRA-targeted
module gets a small low-rank side branch that can subtract Δ_sem per batch sample:

    y_b = W_PiSA x_b + c_b · s · B(A(x_b)),   c_b = 0 → ε_PiSA,   c_b = −1 → ε_pix.

So the default mode runs plain merged weights (no branch at all), and the adjustable mode runs the
pix and pix+sem passes as one batch of two with c = (−1, 0). In eager inference the branch runs
only on the chunks whose c is not 0 and is added into the layer's output in place, the up
projection fused into that addition (one addmm); with autograd on or under torch.compile it runs
on the whole batch out of place (Dynamo would specialise on the slices). peft's unmerged layers
would run two low-rank products per layer in every pass, the default one included, which is why
inference keeps its own layer code here while training uses peft (benchmarks/speed.py times
both: variant peft-unmerged-default).

The merge happens either on a loaded UNet (merge_family) or while its weights are read (LoRAMerge,
used by PiSAPipeline.from_files): each targeted weight is summed in float32 and rounded once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import PiSAError
from .checkpoint import PiSAWeights, check_compatible
from .lora import LoRAFamily, adapted_weight_shape, conv_settings, lora_down, lora_forward, lora_up, merged_weight


class LowRankBranch(nn.Module):
    """s · B(A(x)) for one Linear or Conv2d module, with the scale folded into B once."""

    def __init__(self, base: nn.Module, down: torch.Tensor, up: torch.Tensor, scale: float):
        super().__init__()
        self.register_buffer("down", down.detach().clone().float(), persistent=False)
        self.register_buffer("up", (up.detach().float() * scale), persistent=False)
        self.conv = conv_settings(base)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lora_forward(x, self.down, self.up, self.conv)

    def add_to(self, out: torch.Tensor, x: torch.Tensor, alpha: float) -> None:
        """out += alpha · s·B(A(x)) in place. B's product is accumulated straight into `out` (one
        addmm) when the output's channels are its last, dense dimension: a contiguous Linear
        output or a channels-last conv output; otherwise B runs on its own and is added."""
        hidden = lora_down(x, self.down, self.conv)
        if self.conv is None and out.is_contiguous():
            rows, hidden_rows, up = out, hidden, self.up
        elif self.conv is not None and out.is_contiguous(memory_format=torch.channels_last):
            rows, hidden_rows, up = out.permute(0, 2, 3, 1), hidden.permute(0, 2, 3, 1), self.up[:, :, 0, 0]
        else:
            out.add_(lora_up(hidden, self.up), alpha=alpha)
            return
        rows.view(-1, rows.shape[-1]).addmm_(hidden_rows.reshape(-1, hidden_rows.shape[-1]), up.t(), alpha=alpha)


def merge_family(unet: nn.Module, family: LoRAFamily) -> None:
    """W <- W + s·ΣB@A for every module of one LoRA (lora.merged_weight: summed in float32,
    rounded once to the weight's dtype)."""
    modules = dict(unet.named_modules())
    with torch.no_grad():
        for name, (down, up) in family.factors.items():
            weight = modules[name].weight
            weight.copy_(merged_weight(weight, [(down, up, family.scale)]))


class LoRAMerge:
    """A loader's per-tensor transform that merges both LoRAs into the UNet weights as they are
    read: W0 + s_pix·ΣB@A + s_sem·ΣB@A in float32 (lora.merged_weight). check_complete() after
    loading: every LoRA module must have met its weight, with the shape its factors imply."""

    def __init__(self, weights: PiSAWeights, source_name: str):
        self.source_name = source_name
        self.pending: dict[str, list] = {}
        for family in (weights.pix, weights.sem):
            for module, (down, up) in family.factors.items():
                self.pending.setdefault(module, []).append((down, up, family.scale))

    def __call__(self, name: str, tensor: torch.Tensor) -> torch.Tensor:
        module, _, leaf = name.rpartition(".")
        if leaf != "weight" or module not in self.pending:
            return tensor
        pairs = self.pending.pop(module)
        needed = adapted_weight_shape(*pairs[0][:2])
        if tuple(tensor.shape) != needed:
            raise PiSAError(f"'{self.source_name}': the LoRA for module '{module}' needs a base weight of shape "
                            f"{needed}, but the UNet's is {tuple(tensor.shape)} (weights made for another base model?).")
        return merged_weight(tensor, pairs, torch.float32)

    def check_complete(self) -> None:
        if self.pending:
            module = next(iter(self.pending))
            raise PiSAError(f"'{self.source_name}' has LoRA weights for module '{module}', which the base UNet does "
                            "not have (weights made for another base model?).")


class DualLoRAUNet(nn.Module):
    """A diffusers UNet with W_PiSA merged and a per-sample switch back to W_pix."""

    def __init__(self, unet: nn.Module, weights: PiSAWeights, source_name: str = "PiSA-SR weights",
                 merged: bool = False):
        """merged: the UNet already holds W_PiSA (merged while loading, see LoRAMerge)."""
        super().__init__()
        check_compatible(weights, unet, source_name)
        if not merged:
            merge_family(unet, weights.pix)
            merge_family(unet, weights.sem)
        self.unet = unet
        modules = dict(unet.named_modules())
        self.sem_branches = nn.ModuleDict()
        self._chunks: torch.Tensor | None = None  # set for the duration of one forward
        self._chunk_values: list[float] = []  # the same coefficients as numbers, for the eager path
        for name, (down, up) in weights.sem.factors.items():
            branch = LowRankBranch(modules[name], down, up, weights.sem.scale)
            self.sem_branches[name.replace(".", "__")] = branch
            modules[name].register_forward_hook(self._make_hook(branch))

    def _make_hook(self, branch: LowRankBranch):
        def hook(module, args, output):
            chunks = self._chunks
            if chunks is None:
                return output
            n = chunks.numel()
            if eager_inference():
                # eager inference: only the chunks whose c is not 0, in place
                inputs, outputs = args[0].unflatten(0, (n, -1)), output.unflatten(0, (n, -1))
                for i, c in enumerate(self._chunk_values):
                    if c:
                        branch.add_to(outputs[i], inputs[i], c)
                return output
            # c_b per chunk of the batch, broadcast over the chunk's samples without naming its size,
            # so a compiled UNet keeps the batch dimension symbolic
            coef = chunks.view((n,) + (1,) * output.dim())
            update = branch(args[0]).unflatten(0, (n, -1))
            return torch.addcmul(output.unflatten(0, (n, -1)), coef, update).flatten(0, 1)

        return hook

    def compile_unet(self, **kwargs) -> None:
        """torch.compile the UNet in place (the side-branch hooks are traced with it)."""
        self.unet.compile(**kwargs)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def forward(self, latents: torch.Tensor, prompt_embeds: torch.Tensor, sem_off: Sequence[bool] | None = None,
                timestep: int = 1) -> torch.Tensor:
        """UNet ε at `timestep` for a batch of scaled latents.

        `sem_off` gives, per chunk of the batch (the batch is split into len(sem_off) equal
        chunks), whether the semantic LoRA is removed (ε_pix) or kept (ε_PiSA). None: all ε_PiSA.
        """
        batch = latents.shape[0]
        embeds = prompt_embeds.to(latents.device, latents.dtype).expand(batch, -1, -1)
        t = torch.full((1,), timestep, device=latents.device, dtype=torch.long)
        self._chunk_values = self._chunk_coefficients(sem_off, batch)
        self._chunks = (torch.tensor(self._chunk_values, device=latents.device, dtype=latents.dtype)
                        if self._chunk_values else None)
        try:
            return self.unet(latents, t, encoder_hidden_states=embeds, return_dict=False)[0]
        finally:
            self._chunks, self._chunk_values = None, []

    @staticmethod
    def _chunk_coefficients(sem_off, batch) -> list[float]:
        """c per chunk of the batch: −1 removes Δ_sem (ε_pix), 0 keeps it (ε_PiSA); []: no branch."""
        if sem_off is None or not any(sem_off):
            return []
        if batch % len(sem_off):
            raise ValueError(f"batch {batch} does not split into {len(sem_off)} equal chunks")
        return [-1.0 if off else 0.0 for off in sem_off]


def eager_inference() -> bool:
    """Autograd off and torch.compile not tracing: where this package's in-place shortcuts apply
    (the side branch here, resnet_inplace). Under autograd they would break the backward pass;
    under torch.compile they only cause graph breaks (the compiler plans buffers itself)."""
    is_compiling = getattr(torch.compiler, "is_compiling", None) or torch._dynamo.is_compiling  # torch < 2.3
    return not (torch.is_grad_enabled() or is_compiling())
