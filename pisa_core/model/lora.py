"""LoRA arithmetic, in one place for inference, weight conversion and training.

A LoRA pair adapts a frozen Linear or Conv2d weight W0 with two factors, the down-projection A
and the up-projection B, scaled by s = alpha / rank (Hu et al., LoRA, arXiv 2106.09685, Sec. 4.1;
PiSA-SR, arXiv 2412.03017, Sec. 3 puts one such pair per targeted layer for each of its two
LoRAs). Shapes, as peft stores them and as the authors' release saves them:

    Linear: A (r, in),         B (out, r)          y = W0 x + s · B A x
    Conv2d: A (r, in, kh, kw), B (out, r, 1, 1)    y = W0 * x + s · B * (A * x)

A is a conv with the layer's own stride/padding/dilation and B a 1x1 conv, so the pair merges
into one kernel of the layer's shape: ΔW = s · B[:, :, 0, 0] @ A (flattened over in·kh·kw).

Which layers carry a LoRA is the release's rule (docs/release.md, "LoRA targets"): every UNet
parameter whose name contains one of RELEASE_TARGET_SUBSTRINGS and none of
RELEASE_EXCLUDED_SUBSTRINGS. The release groups them by name into an encoder, a decoder and an
"others" adapter (module_group).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PiSAError

FAMILIES = ("pix", "sem")
GROUPS = ("encoder", "decoder", "others")

# The release does not store alpha; it is peft's default lora_alpha (docs/release.md).
PEFT_DEFAULT_ALPHA = 8.0

RELEASE_TARGET_SUBSTRINGS = (
    "to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_in", "conv_shortcut",
    "conv_out", "proj_out", "proj_in", "ff.net.2", "ff.net.0.proj",
)
RELEASE_EXCLUDED_SUBSTRINGS = ("bias", "norm")


@dataclass
class LoRAFamily:
    """One LoRA ("pix" or "sem"): rank, alpha and the (A, B) factors of every targeted module,
    keyed by diffusers UNet module name (float32, CPU)."""

    rank: int
    alpha: float
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]]

    @property
    def scale(self) -> float:
        return lora_scale(self.alpha, self.rank)


def lora_scale(alpha: float, rank: int) -> float:
    """s = alpha / rank (LoRA Sec. 4.1; the release's alpha 8 and rank 4 give s = 2)."""
    return float(alpha) / int(rank)


def lora_delta(A: torch.Tensor, B: torch.Tensor, scale: float) -> torch.Tensor:
    """ΔW = s · B @ A in the base weight's full shape, float32 (Linear or Conv2d pair)."""
    down, up = _flat_factors(A, B)
    return (scale * (up @ down)).reshape(adapted_weight_shape(A, B))


def merged_weight(weight: torch.Tensor, pairs, dtype: torch.dtype | None = None) -> torch.Tensor:
    """W0 + Σ s·B@A over `pairs` [(A, B, s), ...], summed in float32 and rounded once to `dtype`
    (default: the weight's own dtype). All pairs go in as one product of rank Σr added to W0 by
    one addmm: a single pass over the weight instead of one full-size ΔW per pair."""
    if not pairs:
        return weight.to(dtype=dtype or weight.dtype, copy=True)
    for A, B, _ in pairs:
        if (needed := adapted_weight_shape(A, B)) != tuple(weight.shape):
            raise PiSAError(f"a LoRA pair for a weight of shape {needed} was given a weight of shape "
                            f"{tuple(weight.shape)}.")
    flats = [(*_flat_factors(A, B), scale) for A, B, scale in pairs]
    downs = torch.cat([down for down, _, _ in flats], dim=0).to(weight.device)
    ups = torch.cat([scale * up for _, up, scale in flats], dim=1).to(weight.device)
    total = torch.addmm(weight.float().reshape(weight.shape[0], -1), ups, downs)
    return total.reshape(weight.shape).to(dtype or weight.dtype)


def _flat_factors(A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A as (r, in·kh·kw) and B as (out, r), float32, after checking that the pair fits together."""
    if A.ndim == 2 and B.ndim == 2 and B.shape[1] == A.shape[0]:
        return A.float(), B.float()
    if A.ndim == 4 and B.ndim == 4 and B.shape[1] == A.shape[0] and tuple(B.shape[2:]) == (1, 1):
        return A.float().reshape(A.shape[0], -1), B.float()[:, :, 0, 0]
    raise PiSAError(
        f"LoRA factors of shapes A {tuple(A.shape)} and B {tuple(B.shape)} do not fit together; expected "
        "A (r, in) with B (out, r), or A (r, in, kh, kw) with B (out, r, 1, 1)."
    )


def lora_forward(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor, conv: dict | None = None) -> torch.Tensor:
    """B(A(x)) without the scale (fold it into B once). A 4-D A is a conv pair: A runs with the
    base layer's `conv` settings (stride, padding, dilation), B as a 1x1 conv."""
    return lora_up(lora_down(x, A, conv), B)


def lora_down(x: torch.Tensor, A: torch.Tensor, conv: dict | None = None) -> torch.Tensor:
    """A(x): the rank-r hidden of a pair (a conv with the base layer's settings for a 4-D A)."""
    return F.conv2d(x, A, **(conv or {})) if A.ndim == 4 else F.linear(x, A)


def lora_up(hidden: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """B(hidden): a 1x1 conv for a 4-D B, else a linear map."""
    return F.conv2d(hidden, B) if B.ndim == 4 else F.linear(hidden, B)


def conv_settings(layer: nn.Module) -> dict | None:
    """The settings a conv LoRA's A shares with its base layer; None for a Linear layer."""
    if isinstance(layer, nn.Conv2d):
        return {"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation}
    return None


def factor_shapes(weight_shape, rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(A shape, B shape) of a rank-r LoRA for a base weight of `weight_shape`
    ((out, in) or (out, in, kh, kw))."""
    out_features, in_features, *kernel = (int(s) for s in weight_shape)
    if kernel:
        return (rank, in_features, *kernel), (out_features, rank, 1, 1)
    return (rank, in_features), (out_features, rank)


def adapted_weight_shape(A: torch.Tensor, B: torch.Tensor) -> tuple[int, ...]:
    """Shape of the base weight a LoRA pair adapts: (out, in) or (out, in, kh, kw)."""
    return (int(B.shape[0]), *(int(s) for s in A.shape[1:]))


def module_kind(A: torch.Tensor) -> str:
    """'linear' for a Linear LoRA, 'conv{kh}x{kw}' for a conv LoRA."""
    return "linear" if A.ndim == 2 else f"conv{A.shape[2]}x{A.shape[3]}"


def module_group(name: str) -> str:
    """The release's grouping by name: encoder if it holds down_blocks or conv_in, else decoder if
    it holds up_blocks or conv_out, else others (the mid block). The order of the tests matters."""
    if "down_blocks" in name or "conv_in" in name:
        return "encoder"
    if "up_blocks" in name or "conv_out" in name:
        return "decoder"
    return "others"


def is_release_target(parameter_name: str) -> bool:
    """The release's target rule on a UNet parameter name."""
    return (
        parameter_name.endswith(".weight")
        and any(s in parameter_name for s in RELEASE_TARGET_SUBSTRINGS)
        and not any(s in parameter_name for s in RELEASE_EXCLUDED_SUBSTRINGS)
    )


def release_target_modules(unet: nn.Module) -> list[str]:
    """Module names the release puts a LoRA on (the same list for pix and sem), in parameter order."""
    return [name[: -len(".weight")] for name, _ in unet.named_parameters() if is_release_target(name)]


def zero_family(like: LoRAFamily) -> LoRAFamily:
    """A family with the same modules and rank whose factors are all zero (no effect on the UNet)."""
    return LoRAFamily(rank=like.rank, alpha=like.alpha,
                      factors={n: (torch.zeros_like(A), torch.zeros_like(B)) for n, (A, B) in like.factors.items()})
