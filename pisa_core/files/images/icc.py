"""Embedded ICC colour profiles: converting an image's colours to sRGB and back in float.

The model was trained on sRGB images, so an input with a profile is converted to sRGB first, and
the output is converted back to that profile. Matrix/TRC profiles (RGB: three tone curves and the
colorants rXYZ/gXYZ/bXYZ; gray: the tone curve kTRC) are what cameras, phones and editors embed
(sRGB, Display P3, Adobe RGB, ProPhoto, gray gamma 2.2). They are evaluated here in float32 on the
CPU, so 16-bit images keep 16-bit precision (Pillow's ImageCms works on 8-bit samples):

    device values --tone curves--> linear --colorants--> XYZ (D50, the ICC PCS)
                  --Bradford D50->D65--> XYZ (D65) --IEC 61966-2-1--> sRGB

(ICC.1:2010, 8.3.3 for RGB and 8.3.4 for gray matrix/TRC profiles). Colours outside the sRGB
gamut come out below 0 or above 1 and are clipped per channel, as littleCMS does for integer
data. Other profiles (tables A2B0/B2A0, CMYK, Lab) go through Pillow's ImageCms at 8 bits.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from functools import lru_cache

import torch
from PIL import Image, ImageCms

from ...errors import PiSAError
from ..colorspace import (
    D50_WHITE,
    D65_WHITE,
    SRGB_TO_XYZ,
    apply_matrix,
    bradford_adaptation,
    linear_to_srgb,
    srgb_to_linear,
)

_HEADER = 128
_RGB_TAGS = (b"rXYZ", b"gXYZ", b"bXYZ", b"rTRC", b"gTRC", b"bTRC")
_LUT_TAGS = (b"A2B0", b"A2B1", b"A2B2", b"B2A0")
# ICC.1:2010, 10.16: parameters of each parametric curve function type.
_PARA_COUNTS = {0: 1, 1: 3, 2: 4, 3: 5, 4: 7}


class ProfileError(PiSAError):
    """An ICC profile that cannot be parsed (read_image ignores such an embedded profile with a
    warning; write_image refuses it)."""


def _s15(data: bytes) -> list[float]:
    """s15Fixed16Number values (ICC.1:2010, 4.6)."""
    return [v / 65536.0 for v in struct.unpack(f">{len(data) // 4}i", data)]


def _tags(data: bytes) -> dict[bytes, bytes]:
    """Tag signature -> its data, from the tag table after the 128-byte header (ICC.1:2010, 7.3)."""
    if len(data) < _HEADER + 4 or data[36:40] != b"acsp":
        raise ProfileError("not an ICC profile (no 'acsp' signature)")
    (count,) = struct.unpack(">I", data[_HEADER:_HEADER + 4])
    table = data[_HEADER + 4:_HEADER + 4 + 12 * count]
    if len(table) < 12 * count:
        raise ProfileError("its tag table is truncated")
    tags = {}
    for i in range(count):
        signature, offset, size = struct.unpack(">4sII", table[12 * i:12 * i + 12])
        if offset + size > len(data):
            raise ProfileError(f"its tag {signature.decode('latin-1')!r} lies outside the profile")
        tags[signature] = data[offset:offset + size]
    return tags


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation of the points (xp, fp) at x (xp non-decreasing), held
    constant outside them."""
    x = x.clamp(xp[0], xp[-1])
    right = torch.searchsorted(xp, x.contiguous()).clamp(1, len(xp) - 1)
    left = right - 1
    span = (xp[right] - xp[left]).clamp_min(1e-12)
    weight = ((x - xp[left]) / span).clamp(0, 1)
    return fp[left] + weight * (fp[right] - fp[left])


def _interp_uniform(x: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """_interp for points evenly spaced over [0, 1]: the segment is found by arithmetic."""
    position = x.clamp(0, 1) * (len(fp) - 1)
    left = position.floor().long().clamp_(max=len(fp) - 2)
    weight = position - left
    return fp[left] + weight * (fp[left + 1] - fp[left])


def _parametric(kind: int, p: tuple[float, ...], x: torch.Tensor) -> torch.Tensor:
    """ICC.1:2010, 10.16, Table 65: the five parametric curve functions."""
    if kind == 0:
        return x.clamp_min(0) ** p[0]
    g, a, b = p[:3]
    power = (a * x + b).clamp_min(0) ** g
    if kind == 1:
        return torch.where(x >= -b / a, power, torch.zeros_like(x))
    if kind == 2:
        return torch.where(x >= -b / a, power + p[3], torch.full_like(x, p[3]))
    c, d = p[3], p[4]
    if kind == 3:
        return torch.where(x >= d, power, c * x)
    e, f = p[5], p[6]
    return torch.where(x >= d, power + e, c * x + f)


def _parametric_inverse(kind: int, p: tuple[float, ...], y: torch.Tensor) -> torch.Tensor:
    """The inverse of _parametric on its increasing part: the power segment solved for x above
    the value at the junction d, the linear segment below it (types 3 and 4)."""
    if kind == 0:
        return y.clamp_min(0) ** (1 / p[0])
    g, a, b = p[:3]
    offset = p[3] if kind == 2 else p[5] if kind == 4 else 0.0  # c of type 2, e of type 4
    root = ((y - offset).clamp_min(0) ** (1 / g) - b) / a
    if kind in (1, 2):
        return root
    c, d = p[3], p[4]
    f = p[6] if kind == 4 else 0.0
    junction = max(a * d + b, 0.0) ** g + offset
    linear = (y - f) / c if c != 0 else torch.zeros_like(y)
    return torch.where(y >= junction, root, linear)


@dataclass(frozen=True)
class ToneCurve:
    """One tone curve (device value -> linear light): parametric (a 'para' type, or a 'curv'
    gamma, which is type 0) evaluated exactly both ways, or a 'curv' table interpolated linearly
    forward and inverted by searching the table."""

    kind: int                     # parametric function type 0..4; -1 for a table
    params: tuple[float, ...] = ()
    table: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _interp_uniform(x, self.table) if self.table is not None else _parametric(self.kind, self.params, x)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        if self.table is None:
            return _parametric_inverse(self.kind, self.params, y)
        rising = torch.cummax(self.table, dim=0).values  # searching needs it non-decreasing
        return _interp(y, rising, torch.linspace(0, 1, len(rising)))


def _curve(tag: bytes) -> ToneCurve:
    """A tone curve tag: 'curv' (ICC.1:2010, 10.5) or 'para' (10.16)."""
    kind = tag[:4]
    if kind == b"curv":
        (count,) = struct.unpack(">I", tag[8:12])
        values = struct.unpack(f">{count}H", tag[12:12 + 2 * count])
        if count <= 1:  # none: identity; one: a u8Fixed8Number gamma
            return _checked(ToneCurve(0, (values[0] / 256.0 if values else 1.0,)))
        return ToneCurve(-1, table=torch.tensor(values, dtype=torch.float32) / 65535.0)
    if kind == b"para":
        (function,) = struct.unpack(">H", tag[8:10])
        if function not in _PARA_COUNTS:
            raise ProfileError(f"unknown parametric curve type {function}")
        params = tuple(_s15(tag[12:12 + 4 * _PARA_COUNTS[function]]))
        if len(params) != _PARA_COUNTS[function]:
            raise ProfileError(f"its parametric curve (type {function}) is truncated")
        return _checked(ToneCurve(function, params))
    raise ProfileError(f"unknown tone curve type {kind.decode('latin-1')!r}")


def _checked(curve: ToneCurve) -> ToneCurve:
    """A parametric curve that rises (a positive exponent g, and a ≠ 0 where it divides) and gives
    finite values both ways on [0, 1] (an exponent of thousands overflows float32 to inf, which
    would turn colours into NaN)."""
    g = curve.params[0]
    if not g > 0 or (curve.kind > 0 and curve.params[1] == 0):
        raise ProfileError(f"its parametric curve (type {curve.kind}, parameters {curve.params}) does not rise")
    grid = torch.linspace(0, 1, 65)
    try:
        finite = bool(torch.isfinite(curve.forward(grid)).all() and torch.isfinite(curve.inverse(grid)).all())
    except OverflowError:  # the inverse's junction value is a Python float
        finite = False
    if not finite:
        raise ProfileError(f"its parametric curve (type {curve.kind}, parameters {curve.params}) overflows")
    return curve


@dataclass(frozen=True)
class MatrixProfile:
    """A matrix/TRC profile, ready to convert with: one tone curve per channel (device value ->
    linear); `to_pcs` maps linear RGB to XYZ (D50) (None for gray)."""

    data: bytes
    gray: bool
    curves: tuple[ToneCurve, ...]
    to_pcs: torch.Tensor | None  # [3, 3]

    @property
    def channels(self) -> int:
        return 1 if self.gray else 3


@dataclass(frozen=True)
class Profile:
    """An embedded profile: its bytes, its colour space ("RGB", "GRAY", "CMYK", ...), a short
    description, and the matrix form where it has one (None: converted by ImageCms at 8 bits)."""

    data: bytes
    space: str
    description: str
    matrix: MatrixProfile | None


def _xyz(tag: bytes) -> list[float]:
    """An 'XYZ ' tag's first XYZ number (ICC.1:2010, 10.31): three s15Fixed16Number values."""
    if tag[:4] != b"XYZ " or len(tag) < 20:
        raise ProfileError(f"a colorant tag is not an XYZ number (type {tag[:4]!r}, {len(tag)} bytes)")
    return _s15(tag[8:20])


def _matrix_profile(data: bytes, space: str, tags: dict[bytes, bytes]) -> MatrixProfile | None:
    if any(tag in tags for tag in _LUT_TAGS) or data[20:24] != b"XYZ ":
        return None  # littleCMS prefers the tables where a profile has both
    if space == "GRAY" and b"kTRC" in tags:
        return MatrixProfile(data, True, (_curve(tags[b"kTRC"]),), None)
    if space == "RGB" and all(tag in tags for tag in _RGB_TAGS):
        colorants = [_xyz(tags[tag]) for tag in _RGB_TAGS[:3]]
        to_pcs = torch.tensor(colorants, dtype=torch.float32).T  # columns: the colorants
        if abs(float(torch.linalg.det(to_pcs))) < 1e-6:
            raise ProfileError("its colorants are not independent (no inverse)")
        return MatrixProfile(data, False, tuple(_curve(tags[tag]) for tag in _RGB_TAGS[3:]), to_pcs)
    return None


def parse_profile(data: bytes) -> Profile:
    """The embedded profile `data`; ProfileError when it cannot be parsed or littleCMS refuses it."""
    try:
        cms = ImageCms.ImageCmsProfile(io.BytesIO(data))
    except (OSError, ImageCms.PyCMSError, TypeError, ValueError) as exc:
        raise ProfileError(f"littleCMS cannot open it ({exc})") from None
    space = data[16:20].decode("latin-1").strip()  # the header's colour space (ICC.1:2010, 7.2.6), as bytes
    try:  # Pillow decodes the description's text: UnicodeDecodeError, or ValueError on a code point
        description = (cms.profile.profile_description or "").strip() or "unnamed"  # beyond U+10FFFF
    except ValueError:
        description = "unnamed"
    try:
        matrix = _matrix_profile(data, space, _tags(data))
    except (struct.error, IndexError, ZeroDivisionError) as exc:
        raise ProfileError(f"a tag is malformed ({exc})") from None
    return Profile(data, space, description, matrix)


@lru_cache(maxsize=1)
def _pcs_to_srgb_linear() -> torch.Tensor:
    """XYZ (D50) -> linear sRGB: Bradford to D65, then the inverse of the IEC 61966-2-1 matrix."""
    to_d65 = bradford_adaptation(D50_WHITE, D65_WHITE)
    return torch.linalg.inv(torch.tensor(SRGB_TO_XYZ, dtype=torch.float32)) @ to_d65


def _apply_curves(curves: tuple[ToneCurve, ...], x: torch.Tensor, inverse: bool) -> torch.Tensor:
    """Each channel of x [..., C] through its curve (or the curve's inverse)."""
    planes = x.movedim(-1, 0).contiguous()  # one contiguous plane per channel
    out = [curve.inverse(plane) if inverse else curve.forward(plane) for curve, plane in zip(curves, planes)]
    return torch.stack(out, dim=-1)


def matrix_to_srgb(colour: torch.Tensor, profile: MatrixProfile) -> torch.Tensor:
    """Colour channels [..., C] (C = 1 gray or 3 RGB) in the profile -> sRGB in [0, 1], clipped."""
    linear = _apply_curves(profile.curves, colour.float().clamp(0, 1), inverse=False)
    if not profile.gray:
        linear = apply_matrix(_pcs_to_srgb_linear() @ profile.to_pcs, linear, dim=-1)
    return linear_to_srgb(linear.clamp(0, 1))  # gray: Y of the PCS is the sRGB gray's luminance


def matrix_from_srgb(colour: torch.Tensor, profile: MatrixProfile) -> torch.Tensor:
    """The inverse of matrix_to_srgb: sRGB [..., C] -> the profile's values in [0, 1], clipped."""
    linear = srgb_to_linear(colour.float().clamp(0, 1))
    if not profile.gray:
        to_srgb = _pcs_to_srgb_linear() @ profile.to_pcs
        linear = apply_matrix(torch.linalg.inv(to_srgb), linear, dim=-1)
    return _apply_curves(profile.curves, linear.clamp(0, 1), inverse=True).clamp(0, 1)


@lru_cache(maxsize=1)
def srgb_profile() -> bytes:
    """littleCMS's built-in sRGB profile, the tag of outputs written as sRGB."""
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def lcms_to_srgb(image: Image.Image, profile: Profile) -> Image.Image:
    """An 8-bit Pillow image in a table-based (or CMYK, Lab) profile -> sRGB "RGB" (or "RGBA"
    with the alpha kept) through ImageCms; ProfileError when littleCMS cannot build the transform
    (a profile it opens can still hold tables it cannot use)."""
    source = ImageCms.ImageCmsProfile(io.BytesIO(profile.data))
    target = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))  # exact, not its s15Fixed16 copy
    alpha = image.getchannel("A") if "A" in image.getbands() else None
    colour = image.convert(profile_mode(profile)) if image.mode != profile_mode(profile) else image
    try:
        converted = ImageCms.profileToProfile(colour, source, target, outputMode="RGB")
    except ImageCms.PyCMSError as exc:  # an OSError in older Pillow, a plain Exception since
        raise ProfileError(f"littleCMS cannot convert with it ({exc})") from None
    if alpha is not None:
        converted.putalpha(alpha)
    return converted


def profile_mode(profile: Profile) -> str:
    """The 8-bit Pillow mode ImageCms converts from for this profile's colour space."""
    return {"GRAY": "L", "CMYK": "CMYK", "LAB": "LAB"}.get(profile.space, "RGB")
