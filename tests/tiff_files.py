"""16-bit TIFFs encoded byte by byte at test time (TIFF 6.0), independently of pisa_core's reader
and writer: the layouts and compressions real files use (used by the tests and the fuzz seeds)."""

from __future__ import annotations

import struct
import zlib

import numpy as np


def tiff16_bytes(levels, *, order="<", planar=False, tile=None, deflate=False, predictor=False, extra=2):
    """A 16-bit TIFF encoded here, independently of files.images' writer: strips of 3 rows or square
    tiles, interleaved or planar samples, optional deflate and horizontal differencing."""
    h, w, c = levels.shape
    planes = [levels[..., i:i + 1] for i in range(c)] if planar else [levels]
    chunks = []
    for plane in planes:
        side = tile or w
        rows = tile or 3
        for y in range(0, h, rows):
            for x in range(0, w, side):
                block = np.zeros((rows if tile else min(rows, h - y), side, plane.shape[2]), np.uint16)
                part = plane[y:y + rows, x:x + side]
                block[:part.shape[0], :part.shape[1]] = part
                if predictor:
                    block[:, 1:] = block[:, 1:] - block[:, :-1]
                raw = block.astype(order + "u2").tobytes()
                chunks.append(zlib.compress(raw) if deflate else raw)
    offsets, at = [], 8
    for chunk in chunks:
        offsets.append(at)
        at += len(chunk)
    at += at % 2
    tags = [(256, 4, [w]), (257, 4, [h]), (258, 3, [16] * c), (259, 3, [8 if deflate else 1]),
            (262, 3, [2 if c >= 3 else 1]), (277, 3, [c]), (284, 3, [2 if planar else 1]),
            (317, 3, [2 if predictor else 1])]
    tags += ([(322, 4, [tile]), (323, 4, [tile]), (324, 4, offsets), (325, 4, [len(x) for x in chunks])] if tile else
             [(273, 4, offsets), (278, 4, [3]), (279, 4, [len(x) for x in chunks])])
    if c in (2, 4):
        tags.append((338, 3, [extra]))
    tags.sort()
    values_at = at + 2 + 12 * len(tags) + 4
    table, values = b"", b""
    for tag, kind, vals in tags:
        packed = struct.pack(order + ("H" if kind == 3 else "I") * len(vals), *vals)
        if len(packed) <= 4:
            field = packed.ljust(4, b"\0")
        else:
            field = struct.pack(order + "I", values_at + len(values))
            values += packed
        table += struct.pack(order + "HHI", tag, kind, len(vals)) + field
    head = (b"II*\0" if order == "<" else b"MM\0*") + struct.pack(order + "I", at)
    return head + b"".join(chunks) + b"\0" * (at - 8 - sum(map(len, chunks))) + \
        struct.pack(order + "H", len(tags)) + table + struct.pack(order + "I", 0) + values


def retag(data: bytes, tag: int, kind: int | None = None, value: int | None = None) -> bytes:
    """A little-endian TIFF with one entry of its first directory changed: its field type and/or
    its value field."""
    data = bytearray(data)
    at = struct.unpack("<I", data[4:8])[0]
    for i in range(struct.unpack("<H", data[at:at + 2])[0]):
        entry = at + 2 + 12 * i
        if struct.unpack("<H", data[entry:entry + 2])[0] == tag:
            if kind is not None:
                data[entry + 2:entry + 4] = struct.pack("<H", kind)
            if value is not None:
                data[entry + 8:entry + 12] = struct.pack("<I", value)
    return bytes(data)


def tiff16(**layout) -> bytes:
    """A small random 16-bit RGB TIFF (6x7) in the given layout."""
    levels = np.random.default_rng(40).integers(0, 65536, (6, 7, 3)).astype(np.uint16)
    return tiff16_bytes(levels, **layout)
