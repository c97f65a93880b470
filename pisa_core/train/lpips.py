"""LPIPS with a VGG16 backbone, in plain torch, weights read from a local file (no download).

LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric"):
inputs in [-1, 1] are shifted/scaled per channel, VGG16 features are taken after relu1_2, relu2_2,
relu3_3, relu4_3 and relu5_3, unit-normalised along channels, their squared difference is weighted
per channel by a learned non-negative 1x1 conv ("lin" head), averaged over space and summed over
the five layers.

The weights file (`--lpips-weights`) is a .safetensors or .pth state dict (read with
weights_only=True) holding both parts, under any of these names:
  backbone  `features.<i>.weight|bias`  (torchvision vgg16 naming) or `net.slice<k>.<i>.weight|bias`
            (the lpips package's module naming);
  heads     `lin<k>.model.1.weight` (lpips package file vgg.pth), `lin<k>.weight` or `lins.<k>.weight`.
Several files may be given (e.g. torchvision's vgg16 .pth and lpips' vgg.pth); they are merged.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PiSAError
from ..files.tensors import read_tensors

# VGG16 "features" layout: conv widths, "M" = 2x2 max pool. Conv indices follow torchvision's Sequential.
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
# Sequential index of the ReLU after which each LPIPS feature is taken (relu1_2 ... relu5_3).
TAP_INDICES = (3, 8, 15, 22, 29)
TAP_CHANNELS = (64, 128, 256, 512, 512)
# LPIPS input normalisation ("ScalingLayer") for inputs in [-1, 1].
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
LPIPS_OPTION = "--lpips-weights"


def vgg16_conv_indices() -> list[int]:
    """Sequential indices of the 13 convolutions in torchvision's vgg16().features."""
    indices, i = [], 0
    for entry in VGG16_LAYOUT:
        if entry == "M":
            i += 1
        else:
            indices.append(i)
            i += 2  # conv, relu
    return indices


class VGG16Features(nn.Module):
    """VGG16 conv trunk up to relu5_3, returning the five LPIPS taps."""

    def __init__(self):
        super().__init__()
        layers, channels = [], 3
        for entry in VGG16_LAYOUT:
            if entry == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, entry, 3, padding=1), nn.ReLU(inplace=False)]
                channels = entry
        self.features = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in TAP_INDICES:
                taps.append(x)
                if i == TAP_INDICES[-1]:
                    break
        return taps


def unit_normalize(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """LPIPS eq. 1: feature vectors scaled to unit length along channels."""
    return x / (torch.sqrt((x * x).sum(dim=1, keepdim=True)) + eps)


class LPIPS(nn.Module):
    """LPIPS(VGG) distance, per sample [B]; inputs [B, 3, H, W] in [-1, 1]. Frozen."""

    def __init__(self):
        super().__init__()
        self.net = VGG16Features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in TAP_CHANNELS)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        dtype = self.lins[0].weight.dtype
        fx = self.net(((x - self.shift) / self.scale).to(dtype))
        fy = self.net(((y - self.shift) / self.scale).to(dtype))
        total = 0
        for lin, a, b in zip(self.lins, fx, fy):
            diff = (unit_normalize(a.float()) - unit_normalize(b.float())) ** 2
            total = total + F.conv2d(diff, lin.weight.float()).mean(dim=(1, 2, 3))
        return total


def _read_state(path: Path) -> dict:
    if not path.is_file():
        raise PiSAError(f"LPIPS weights file '{path}' ({LPIPS_OPTION}) does not exist.")
    return read_tensors(path, f"LPIPS weights ({LPIPS_OPTION})")


_SLICE_KEY = re.compile(r"^(?:.*\.)?net\.slice\d\.(\d+)\.(weight|bias)$")
_FEATURE_KEY = re.compile(r"^(?:.*\.)?features\.(\d+)\.(weight|bias)$")
_LIN_KEY = re.compile(r"^(?:.*\.)?lin(?:s\.)?(\d)\.(?:model\.1\.)?weight$")


def normalize_lpips_state(state: dict) -> dict:
    """Map the accepted key spellings onto this module's names (net.features.<i>.*, lins.<k>.weight)."""
    out = {}
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            continue
        for pattern, fmt in ((_SLICE_KEY, "net.features.{}.{}"), (_FEATURE_KEY, "net.features.{}.{}")):
            m = pattern.match(key)
            if m:
                out[fmt.format(*m.groups())] = value
                break
        else:
            m = _LIN_KEY.match(key)
            if m:
                out[f"lins.{m.group(1)}.weight"] = value
    return out


def check_lpips_files(paths) -> list[Path]:
    """The --lpips-weights files as paths; PiSAError when none is given or one does not exist."""
    if not paths:
        raise PiSAError(f"LPIPS needs VGG16 + LPIPS head weights: pass {LPIPS_OPTION} FILE "
                        f"(or --lambda-lpips 0 to train without LPIPS).")
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    for p in paths:
        if not p.is_file():
            raise PiSAError(f"LPIPS weights file '{p}' ({LPIPS_OPTION}) does not exist.")
    return paths


def load_lpips(paths, device="cpu", dtype=torch.float32) -> LPIPS:
    """LPIPS(VGG) with weights from local file(s); PiSAError naming --lpips-weights when absent/incomplete."""
    paths = check_lpips_files(paths)
    state = {}
    for p in paths:
        state.update(normalize_lpips_state(_read_state(Path(p))))
    model = LPIPS()
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        part = "LPIPS heads (lin0..lin4)" if missing[0].startswith("lins") else "VGG16 backbone (features.*)"
        raise PiSAError(f"LPIPS weights from {LPIPS_OPTION} ({', '.join(map(str, paths))}) lack the {part}: "
                        f"{len(missing)} tensors missing, e.g. '{missing[0]}'.")
    for key, value in expected.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise PiSAError(f"LPIPS weights from {LPIPS_OPTION}: '{key}' has shape {tuple(state[key].shape)}, "
                            f"expected {tuple(value.shape)}.")
    model.load_state_dict({k: state[k].float() for k in expected})
    return model.to(device=device, dtype=dtype)
