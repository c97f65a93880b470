"""Colour-space formulas: sRGB (IEC 61966-2-1:1999), CIE XYZ and CIELAB (CIE 15:2004, 8.2.1),
and the Bradford chromatic adaptation between the D65 and D50 whites (ICC.1:2010, Annex E).

Each works on float tensors with the colour channels in the dimension `dim` (default 1, as in
[B, C, H, W]), in the input's dtype; callers pass float32 CPU tensors (no float64: Apple's MPS
has none, and these run on the host anyway).
"""

from __future__ import annotations

import torch

# IEC 61966-2-1:1999, 5.2: linear sRGB (D65) -> CIE XYZ, rows X, Y, Z.
SRGB_TO_XYZ = ((0.4124, 0.3576, 0.1805),
               (0.2126, 0.7152, 0.0722),
               (0.0193, 0.1192, 0.9505))
# The D65 white of that matrix (its row sums), so that sRGB white is exactly L* = 100, a* = b* = 0.
D65_WHITE = tuple(sum(row) for row in SRGB_TO_XYZ)
# ICC.1:2010, 7.2.16: the PCS illuminant D50 (s15Fixed16 values of the header).
D50_WHITE = (0.9642, 1.0, 0.8249)
# ICC.1:2010, Annex E.3: the Bradford cone response matrix.
BRADFORD = ((0.8951, 0.2664, -0.1614),
            (-0.7502, 1.7135, 0.0367),
            (0.0389, -0.0685, 1.0296))

_LAB_DELTA = 6.0 / 29.0  # CIE 15:2004, 8.2.1: the junction of the cube root and the linear part


def _matrix(rows, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(rows, dtype=like.dtype, device=like.device)


def apply_matrix(matrix: torch.Tensor, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """matrix (3x3) times the 3-vector in dimension `dim` of x, at every other position."""
    moved = x.movedim(dim, -1)
    return (moved @ matrix.to(x.dtype).T).movedim(-1, dim)


def srgb_to_linear(v: torch.Tensor) -> torch.Tensor:
    """IEC 61966-2-1:1999, 5.2: the sRGB decoding (v / 12.92 at and below 0.04045)."""
    return torch.where(v <= 0.04045, v / 12.92, ((v.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(lin: torch.Tensor) -> torch.Tensor:
    """IEC 61966-2-1:1999, 5.3: the sRGB encoding, the inverse of srgb_to_linear."""
    return torch.where(lin <= 0.0031308, lin * 12.92, 1.055 * lin.clamp_min(0.0031308) ** (1 / 2.4) - 0.055)


def srgb_to_xyz(v: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """sRGB in [0, 1] -> CIE XYZ relative to D65 (Y of white = 1)."""
    return apply_matrix(_matrix(SRGB_TO_XYZ, v), srgb_to_linear(v), dim)


def xyz_to_srgb(xyz: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """CIE XYZ (D65) -> sRGB, unclamped (colours outside the sRGB gamut leave [0, 1])."""
    inverse = torch.linalg.inv(_matrix(SRGB_TO_XYZ, xyz).float()).to(xyz.dtype)
    return linear_to_srgb(apply_matrix(inverse, xyz, dim))


def _lab_f(t: torch.Tensor) -> torch.Tensor:
    """CIE 15:2004, eq. 8.3-8.5: f(t) = t^(1/3) above (6/29)³, else t / (3·(6/29)²) + 4/29."""
    cube = t.clamp_min(_LAB_DELTA ** 3) ** (1.0 / 3.0)
    return torch.where(t > _LAB_DELTA ** 3, cube, t / (3 * _LAB_DELTA ** 2) + 4.0 / 29.0)


def _lab_f_inverse(f: torch.Tensor) -> torch.Tensor:
    """The inverse of _lab_f: f³ above 6/29, else 3·(6/29)²·(f − 4/29)."""
    return torch.where(f > _LAB_DELTA, f ** 3, 3 * _LAB_DELTA ** 2 * (f - 4.0 / 29.0))


def xyz_to_lab(xyz: torch.Tensor, dim: int = 1, white=D65_WHITE) -> torch.Tensor:
    """CIE 15:2004, 8.2.1: L* = 116 f(Y/Yn) − 16, a* = 500 (f(X/Xn) − f(Y/Yn)), b* = 200 (f(Y/Yn) − f(Z/Zn))."""
    x, y, z = (_lab_f(c / w) for c, w in zip(xyz.unbind(dim), white))
    return torch.stack((116 * y - 16, 500 * (x - y), 200 * (y - z)), dim)


def lab_to_xyz(lab: torch.Tensor, dim: int = 1, white=D65_WHITE) -> torch.Tensor:
    """The inverse of xyz_to_lab."""
    lightness, a, b = lab.unbind(dim)
    fy = (lightness + 16) / 116
    parts = (fy + a / 500, fy, fy - b / 200)
    return torch.stack([_lab_f_inverse(f) * w for f, w in zip(parts, white)], dim)


def gray_to_lightness(v: torch.Tensor) -> torch.Tensor:
    """sRGB gray (R = G = B = v) -> L*: Y is the decoded value, a* = b* = 0."""
    return 116 * _lab_f(srgb_to_linear(v)) - 16


def lightness_to_gray(lightness: torch.Tensor) -> torch.Tensor:
    """The inverse of gray_to_lightness, unclamped."""
    return linear_to_srgb(_lab_f_inverse((lightness + 16) / 116))


def bradford_adaptation(source_white, target_white) -> torch.Tensor:
    """ICC.1:2010, Annex E: the 3x3 matrix taking XYZ under source_white to XYZ under target_white,
    M⁻¹ · diag(M·target / M·source) · M with M the Bradford matrix (float32)."""
    cone = torch.tensor(BRADFORD, dtype=torch.float32)
    source = cone @ torch.tensor(source_white, dtype=torch.float32)
    target = cone @ torch.tensor(target_white, dtype=torch.float32)
    return torch.linalg.inv(cone) @ torch.diag(target / source) @ cone
