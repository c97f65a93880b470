"""What a file is, judged by its first bytes (never by its name), so that an error can call a
file given in the wrong place what it really is: "'out.jpg' is a JPEG image, not PiSA-SR weights".
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import NamedTuple

HEAD_BYTES = 512  # enough for every signature below and for judging text

SAFETENSORS = "safetensors"  # 8-byte little-endian header length, then the JSON header
TORCH_ZIP = "torch zip"      # torch.save's default format (a zip archive)
PICKLE = "pickle"            # a protocol 2+ pickle: legacy torch.save files and pickle.dump
IMAGE = "image"
DOCUMENT = "document"
TEXT = "text"
EMPTY = "empty"
UNKNOWN = "unknown"

TENSOR_KINDS = (SAFETENSORS, TORCH_ZIP, PICKLE)

# (prefix, name) of the image formats Pillow reads and a few that users might hand over by mistake
_IMAGE_PREFIXES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"II+\x00", "TIFF"), (b"MM\x00+", "TIFF"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"), (b"\xff\x4f\xff\x51", "JPEG 2000"), (b"qoif", "QOI"),
    (b"8BPS", "Photoshop"), (b"\x76\x2f\x31\x01", "OpenEXR"), (b"#?RADIANCE", "Radiance HDR"),
)
_ISO_MEDIA_BRANDS = {b"avif": "AVIF", b"avis": "AVIF", b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF",
                     b"msf1": "HEIF", b"jxl ": "JPEG XL"}
_BMP_INFO_SIZES = (12, 40, 52, 56, 64, 108, 124)  # BITMAPCOREHEADER .. BITMAPV5HEADER
_DOCUMENT_PREFIXES = ((b"%PDF-", "PDF"), (b"\x1f\x8b", "gzip"), (b"7z\xbc\xaf\x27\x1c", "7-Zip"),
                      (b"\x7fELF", "ELF executable"))


class Kind(NamedTuple):
    kind: str        # one of the constants above
    name: str = ""   # the format, for images and documents ("JPEG", "PDF")
    head: bytes = b""

    def describe(self) -> str:
        """'a JPEG image', 'a text file', 'an empty file', ... for an error message."""
        if self.kind == IMAGE:
            return f"{_article(self.name)} {self.name} image"
        if self.kind == DOCUMENT:
            return f"{_article(self.name)} {self.name} file"
        if self.kind == TEXT:
            return "a text file"
        if self.kind == EMPTY:
            return "an empty file"
        return f"a file of unknown format (it starts with the bytes {self.head[:8].hex(' ')})"


def _article(word: str) -> str:
    return "an" if word[:1].upper() in "AEIOU" else "a"


def sniff(head: bytes) -> Kind:
    """The kind of a file from its first HEAD_BYTES bytes (magic numbers; text when the bytes
    decode as UTF-8 without control characters other than whitespace)."""
    if not head:
        return Kind(EMPTY)
    if len(head) >= 9 and head[8:9] == b"{" and 2 <= struct.unpack("<Q", head[:8])[0] < 2**40:
        return Kind(SAFETENSORS, head=head)
    if head.startswith(b"PK\x03\x04"):
        return Kind(TORCH_ZIP, head=head)
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return Kind(PICKLE, head=head)
    for prefix, name in _IMAGE_PREFIXES:
        if head.startswith(prefix):
            return Kind(IMAGE, name, head)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return Kind(IMAGE, "WebP", head)
    if head[4:8] == b"ftyp" and head[8:12] in _ISO_MEDIA_BRANDS:
        return Kind(IMAGE, _ISO_MEDIA_BRANDS[head[8:12]], head)
    if head[:2] == b"BM" and len(head) >= 18 and struct.unpack("<I", head[14:18])[0] in _BMP_INFO_SIZES:
        return Kind(IMAGE, "BMP", head)
    for prefix, name in _DOCUMENT_PREFIXES:
        if head.startswith(prefix):
            return Kind(DOCUMENT, name, head)
    if _is_text(head):
        return Kind(TEXT, head=head)
    return Kind(UNKNOWN, head=head)


def _is_text(head: bytes) -> bool:
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as error:  # a character cut at the end of the sample still counts
        if error.start < len(head) - 3:
            return False
        text = head[:error.start].decode("utf-8")
    return all(c.isprintable() or c in "\t\n\r\f" for c in text.lstrip("\ufeff"))


def sniff_file(path) -> Kind:
    """sniff() of a file's first bytes (OSError propagates: the caller names the file)."""
    with open(Path(path), "rb") as handle:
        return sniff(handle.read(HEAD_BYTES))
