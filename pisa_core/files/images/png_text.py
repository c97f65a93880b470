"""PNG text chunks (tEXt, zTXt, iTXt): writing keyword/text pairs, reading them back, and the
settings `pisa-sr upscale` records in every PNG it writes."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import png

from ...errors import PiSAError
from .listing import _check_file

SETTINGS_KEYWORD = "pisa-sr"  # the text chunk holding the settings an output of `pisa-sr upscale` was made with

_PNG_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")


def _itxt(path: Path, keyword: str, text: str) -> bytes:
    """The data of an uncompressed iTXt chunk (PNG spec. 11.3.4.5): keyword, NUL, compression flag
    and method 0, empty language tag and translated keyword (each NUL-ended), UTF-8 text."""
    if not (1 <= len(keyword) <= 79 and keyword == keyword.strip() and keyword.isprintable()
            and all(ord(c) < 256 for c in keyword)):
        raise PiSAError(f"Cannot write {str(path)!r}: the PNG text keyword {keyword!r} must be 1 to 79 printable "
                        "Latin-1 characters without leading or trailing spaces.")
    # a file name that is not valid UTF-8 reaches here as surrogates: they are written as \udcXX
    # escapes, which keep the chunk UTF-8 and which JSON (the recorded settings) reads back exactly
    return keyword.encode("latin-1") + b"\0\0\0\0\0" + text.encode("utf-8", "backslashreplace")


def _text_entry(kind: bytes, data: bytes) -> tuple[str, str]:
    """(keyword, text) of a tEXt, zTXt or iTXt chunk's data."""
    keyword, _, rest = data.partition(b"\0")
    if kind == b"tEXt":
        return keyword.decode("latin-1"), rest.decode("latin-1")
    if kind == b"zTXt":
        return keyword.decode("latin-1"), zlib.decompress(rest[1:]).decode("latin-1")
    compressed = rest[:1] == b"\1"
    _language, _, rest = rest[2:].partition(b"\0")
    _translated, _, body = rest.partition(b"\0")
    return keyword.decode("latin-1"), (zlib.decompress(body) if compressed else body).decode("utf-8")


def png_text(path) -> dict[str, str]:
    """The text chunks (tEXt, zTXt, iTXt, wherever they are) of a PNG file: keyword -> text.
    PiSAError naming the file when it is not a readable PNG."""
    path = Path(path)
    _check_file(path)
    found: dict[str, str] = {}
    try:
        with open(path, "rb") as f:
            for kind, data in png.Reader(file=f).chunks():
                if kind in _PNG_TEXT_CHUNKS:
                    keyword, text = _text_entry(kind, data)
                    found.setdefault(keyword, text)
    except EOFError:  # pypng's signal for a file that ends before the PNG signature
        raise PiSAError(f"Cannot read the PNG chunks of {str(path)!r}: it is empty or shorter than a PNG "
                        "signature.") from None
    except (png.Error, OSError, ValueError, zlib.error) as exc:
        raise PiSAError(f"Cannot read the PNG chunks of {str(path)!r}: {exc}.") from exc
    return found


def read_png_settings(path, keyword: str = SETTINGS_KEYWORD) -> dict:
    """The settings `pisa-sr upscale` recorded in a PNG it wrote (a JSON object in the `keyword`
    text chunk), as a dict; PiSAError naming the file when it is not a readable PNG or has none."""
    path = Path(path)
    text = png_text(path).get(keyword)
    if text is None:
        raise PiSAError(f"{str(path)!r} is a PNG image without pisa-sr settings (no {keyword!r} text "
                        "chunk): it was not written by pisa-sr upscale, or an editor dropped the chunk.")
    try:
        settings = json.loads(text)
    except ValueError:
        settings = None
    if not isinstance(settings, dict):
        raise PiSAError(f"{str(path)!r}: its {keyword!r} text chunk is not a JSON object of settings.")
    return settings
