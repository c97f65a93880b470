"""Small ICC v2 display profiles written byte by byte at test time (ICC.1:2001-04 layout): a
matrix/TRC RGB profile and a gray TRC profile, with 'curv' (gamma or table) or 'para' tone
curves. Independent of pisa_core's reader; littleCMS (Pillow's ImageCms) accepts them.

The primaries below are published facts: Adobe RGB (1998) and Display P3 colorants adapted to the
D50 PCS white (Bradford), as their vendors' profiles carry them.
"""

from __future__ import annotations

import struct

D50 = (0.9642, 1.0, 0.8249)
ADOBE_RGB = ((0.60974, 0.31111, 0.01947), (0.20528, 0.62567, 0.06087), (0.14919, 0.06322, 0.74457))
ADOBE_GAMMA = 563 / 256  # 2.19921875, the u8Fixed8 gamma of Adobe RGB (1998)
DISPLAY_P3 = ((0.51512, 0.24120, -0.00105), (0.29198, 0.69225, 0.04189), (0.15710, 0.06657, 0.78407))
SRGB_PARA = (2.4, 1 / 1.055, 0.055 / 1.055, 1 / 12.92, 0.04045)  # IEC 61966-2-1 as parametric type 3


def _s15(*values: float) -> bytes:
    return b"".join(struct.pack(">i", round(v * 65536)) for v in values)


def xyz_tag(xyz) -> bytes:
    return b"XYZ \0\0\0\0" + _s15(*xyz)


def gamma_curve(gamma: float) -> bytes:
    return b"curv\0\0\0\0" + struct.pack(">IH", 1, round(gamma * 256)) + b"\0\0"


def table_curve(values) -> bytes:
    """A sampled curve: values in 0..1 at evenly spaced inputs."""
    data = b"curv\0\0\0\0" + struct.pack(f">I{len(values)}H", len(values), *(round(v * 65535) for v in values))
    return data + b"\0" * (-len(data) % 4)


def para_curve(params) -> bytes:
    """A parametric curve of function type 3 (g, a, b, c, d)."""
    return b"para\0\0\0\0" + struct.pack(">HH", 3, 0) + _s15(*params)


def _desc(text: str | bytes) -> bytes:
    """A v2 textDescriptionType; bytes are written as they are (a damaged profile's text)."""
    ascii_text = (text if isinstance(text, bytes) else text.encode("ascii")) + b"\0"
    data = b"desc\0\0\0\0" + struct.pack(">I", len(ascii_text)) + ascii_text
    data += struct.pack(">II", 0, 0) + struct.pack(">HB", 0, 0) + b"\0" * 67  # no Unicode, no ScriptCode
    return data + b"\0" * (-len(data) % 4)


def _profile(space: bytes, description: str | bytes, tags: dict[bytes, bytes]) -> bytes:
    tags = {b"desc": _desc(description), b"wtpt": xyz_tag(D50), b"cprt": b"text\0\0\0\0public domain\0", **tags}
    table_size = 4 + 12 * len(tags)
    offset = 128 + table_size
    entries, blobs = [], b""
    for signature, data in tags.items():
        data += b"\0" * (-len(data) % 4)
        entries.append(struct.pack(">4sII", signature, offset + len(blobs), len(data)))
        blobs += data
    size = 128 + table_size + len(blobs)
    header = (struct.pack(">I", size) + b"test" + struct.pack(">I", 0x02100000) + b"mntr" + space + b"XYZ "
              + b"\0" * 12 + b"acsp" + b"\0" * 24 + struct.pack(">I", 0) + _s15(*D50) + b"test")
    header += b"\0" * (128 - len(header))
    return header + struct.pack(">I", len(tags)) + b"".join(entries) + blobs


def rgb_profile(colorants=ADOBE_RGB, curve: bytes | None = None, description: str | bytes = "Test wide RGB") -> bytes:
    """A matrix/TRC RGB profile; the same tone curve for the three channels (default: Adobe's gamma)."""
    curve = curve or gamma_curve(ADOBE_GAMMA)
    red, green, blue = colorants
    return _profile(b"RGB ", description, {b"rXYZ": xyz_tag(red), b"gXYZ": xyz_tag(green), b"bXYZ": xyz_tag(blue),
                                           b"rTRC": curve, b"gTRC": curve, b"bTRC": curve})


def gray_profile(curve: bytes | None = None, description: str = "Test gray") -> bytes:
    """A gray TRC profile (default: gamma 1.8)."""
    return _profile(b"GRAY", description, {b"kTRC": curve or gamma_curve(1.8)})


def table_rgb_profile(colorants=ADOBE_RGB, description: str = "Test table RGB") -> bytes:
    """A table-based RGB input profile: an A2B0 lut16 ('mft2') with identity curves and a 2x2x2
    grid holding XYZ = colorants · rgb at the cube's corners, which trilinear interpolation makes
    linear light everywhere: the same colours as rgb_profile(colorants, gamma_curve(1.0))."""
    grid = []
    for r in (0, 1):
        for g in (0, 1):
            for b in (0, 1):
                xyz = [sum(c[i] * w for c, w in zip(colorants, (r, g, b))) for i in range(3)]
                grid += [min(65535, round(v * 32768)) for v in xyz]  # PCSXYZ in 16 bits: 1.0 = 0x8000
    identity = [0, 65535]
    data = (b"mft2\0\0\0\0" + struct.pack(">BBBB", 3, 3, 2, 0) + _s15(1, 0, 0, 0, 1, 0, 0, 0, 1)
            + struct.pack(">HH", 2, 2) + struct.pack(">6H", *identity * 3) + struct.pack(f">{len(grid)}H", *grid)
            + struct.pack(">6H", *identity * 3))
    return _profile(b"RGB ", description, {b"A2B0": data})
