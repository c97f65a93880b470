"""Damaged and hostile image files: each is a PiSAError naming the file (or a warning where a part of
the file is ignored), never another exception. Each case is a finding of a fuzz target under fuzz/
(named in its docstring) made again by code, or a header declaring more than the limits allow."""

from __future__ import annotations

import io
import logging
import struct
import warnings
import zlib

import numpy as np
import pytest
from icc_profiles import _profile, para_curve, rgb_profile, table_rgb_profile
from PIL import Image
from tiff_files import retag, tiff16

from pisa_core.errors import PiSAError
from pisa_core.files.images import png_text, probe_image, read_image, read_mask, to_pil_8bit
from pisa_core.files.images.icc import ProfileError, _curve, parse_profile
from pisa_core.files.images.limits import LIMIT_VARIABLE, max_image_pixels
from pisa_core.options import MAX_OUTPUT_PIXELS

RNG = np.random.default_rng(40)


def rgb_png(path, icc_profile=None):
    Image.fromarray(RNG.integers(0, 256, (5, 6, 3), dtype=np.uint8)).save(path, icc_profile=icc_profile)
    return path


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int, bit_depth: int = 8, colour_type: int = 2) -> bytes:
    """A PNG whose header declares width x height, with one tiny IDAT: a decompression bomb's header."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def readers_refuse(path, match: str) -> None:
    for reader in (probe_image, read_image, read_mask):
        with pytest.raises(PiSAError, match=match):
            reader(path)


# ---------------------------------------------------------------- PNG text


def test_png_text_of_an_empty_file(tmp_path):
    """fuzz_png_text: pypng's EOFError on a file shorter than the PNG signature."""
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(PiSAError, match="empty.png.*empty or shorter than a PNG signature"):
        png_text(tmp_path / "empty.png")


# ---------------------------------------------------------------- ICC profiles


def test_a_profile_error_is_a_pisa_error():
    """fuzz_icc: littleCMS refusing the bytes escaped as ProfileError, a plain ValueError."""
    with pytest.raises(PiSAError, match="littleCMS cannot open it"):
        parse_profile(b"")
    assert issubclass(ProfileError, PiSAError)


def test_profile_description_that_is_not_text(tmp_path):
    """fuzz_icc: ValueError ("character U+ffffffff is not in range") from Pillow decoding a
    description whose bytes littleCMS widens with their sign."""
    profile = rgb_profile(description=b"Te\xff\xff\xff")
    assert parse_profile(profile).description == "unnamed"
    image, info = read_image(rgb_png(tmp_path / "p.png", profile))
    assert info.icc_profile == profile and image.shape == (5, 6, 3)


def test_profile_colour_space_that_is_not_ascii(tmp_path, caplog):
    """fuzz_icc: UnicodeDecodeError from Pillow's xcolor_space on a header colour space of other
    bytes; the space is read from the header's bytes, and such a profile is ignored on reading."""
    profile = bytearray(rgb_profile())
    profile[16:20] = b"R\xd4B "
    parsed = parse_profile(bytes(profile))
    assert parsed.space == "R\xd4B" and parsed.matrix is None
    with caplog.at_level(logging.WARNING, logger="pisa_core"):
        image, info = read_image(rgb_png(tmp_path / "space.png", bytes(profile)))
    assert image.shape == (5, 6, 3) and info.icc_profile is None
    assert "space.png: its ICC profile" in caplog.text and "is ignored" in caplog.text


@pytest.mark.parametrize("params", [(400, 10, 0, 1, 1), (100, 30000, 0, 1, 0)])
def test_parametric_curve_that_overflows(tmp_path, params, caplog):
    """fuzz_icc: OverflowError in the curve's inverse (a Python float power) and inf from its
    forward (float32), which made colours NaN; such a curve is refused when the profile is parsed."""
    profile = rgb_profile(curve=para_curve(params))
    with pytest.raises(ProfileError, match="overflows"):
        parse_profile(profile)
    with caplog.at_level(logging.WARNING, logger="pisa_core"):
        image, _ = read_image(rgb_png(tmp_path / "overflow.png", profile))
    assert bool(image.isfinite().all()) and "overflow.png: its embedded ICC profile is ignored" in caplog.text


def test_colorant_tags_that_are_too_short():
    """fuzz_icc: RuntimeError from torch.linalg.det on a [1, 3] matrix built from colorant tags
    holding one number instead of three."""
    short = b"XYZ \0\0\0\0" + struct.pack(">i", 1 << 15)
    curve = para_curve((2.4, 1, 0, 1, 0))
    profile = _profile(b"RGB ", "short", {b"rXYZ": short, b"gXYZ": short, b"bXYZ": short,
                                         b"rTRC": curve, b"gTRC": curve, b"bTRC": curve})
    with pytest.raises(ProfileError, match="colorant tag is not an XYZ number"):
        parse_profile(profile)


def test_parametric_curve_that_is_truncated():
    """A 'para' tag cut before its parameters: an IndexError once the curve was used."""
    with pytest.raises(ProfileError, match="truncated"):
        _curve(b"para\0\0\0\0" + struct.pack(">HH", 3, 0) + struct.pack(">i", 2 << 16))


def test_table_profile_littlecms_cannot_use(tmp_path, caplog):
    """fuzz_images: PyCMSError ("cannot build transform", no longer an OSError in Pillow 10+)
    from a table profile littleCMS opens but cannot convert with (its lut declares 2 inputs); it
    is ignored like any unusable profile, in read_image and in the release's 8-bit route."""
    profile = bytearray(table_rgb_profile())
    profile[profile.index(b"mft2") + 8] = 2
    path = rgb_png(tmp_path / "lut.png", bytes(profile))
    with caplog.at_level(logging.WARNING, logger="pisa_core"):
        image, info = read_image(path)
        to_pil_8bit(path)
    assert image.shape == (5, 6, 3) and info.icc_profile is None
    assert "lut.png: its ICC profile 'Test table RGB' is ignored (littleCMS cannot convert with it" in caplog.text


# ---------------------------------------------------------------- damaged headers


def test_png_with_a_truncated_header(tmp_path):
    """fuzz_images: ValueError ("Truncated IHDR chunk") from Pillow's Image.open."""
    path = tmp_path / "ihdr.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 5) + b"IHDR" + b"\0" * 9)
    readers_refuse(path, "ihdr.png")


def test_tiff_shorter_than_its_header(tmp_path):
    """The TIFF header walk's struct.error on a file that ends inside the 8-byte header."""
    path = tmp_path / "short.tif"
    path.write_bytes(b"II*\0\x08\0")
    readers_refuse(path, "short.tif")


@pytest.mark.parametrize(("tag", "kind", "value", "match"), [
    (273, 5, None, "malformed TIFF tag 273"),         # strip offsets as fractions: struct.error while describing the view
    (262, 2, None, "malformed TIFF tag 262"),         # photometric as text
    (278, None, 0, "strips of 7x0 pixels"),           # no rows per strip
    (259, 4, 1 << 20, "unknown TIFF compression"),    # a LONG that does not fit the SHORT it must be
])
def test_16bit_tiff_with_a_malformed_tag(tmp_path, tag, kind, value, match):
    """fuzz_images: struct.error ("required argument is not an integer") and TypeError in the
    16-bit TIFF path, from tag values of the wrong type or out of range."""
    path = tmp_path / "tag.tif"
    path.write_bytes(retag(tiff16(), tag, kind, value))
    with pytest.raises(PiSAError, match=match):
        read_image(path)


def test_16bit_tiff_whose_strips_do_not_cover_it(tmp_path):
    path = tmp_path / "strips.tif"
    path.write_bytes(retag(tiff16(), 257, value=60))  # 60 rows, strips for 6
    readers_refuse(path, "60 pixels with 2 strip offsets and 2 byte counts; expected 20")
    path.write_bytes(retag(tiff16(tile=16), 322, value=24))
    readers_refuse(path, "24x16 tiles; TIFF 6.0 tiles are multiples of 16")


# ---------------------------------------------------------------- limits


def test_the_pixel_limit_and_its_variable(monkeypatch):
    monkeypatch.delenv(LIMIT_VARIABLE, raising=False)
    assert max_image_pixels() == MAX_OUTPUT_PIXELS
    monkeypatch.setenv(LIMIT_VARIABLE, "1000")
    assert max_image_pixels() == 1000
    for bad in ("-3", "lots", "0"):
        monkeypatch.setenv(LIMIT_VARIABLE, bad)
        with pytest.raises(PiSAError, match=f"{LIMIT_VARIABLE}='{bad}' is not a positive whole number"):
            max_image_pixels()


@pytest.mark.parametrize(("name", "data"), [
    ("bomb.png", png_declaring(9000, 9000)),                       # 77 MP: above ours, below Pillow's limit
    ("bomb16.png", png_declaring(9000, 9000, 16, 6)),              # 16-bit RGBA: read by pypng
    ("huge.png", png_declaring(60000, 60000)),                     # above Pillow's own limit (its error)
    ("bomb16.tif", retag(tiff16(), 256, value=1 << 30)),           # our 16-bit TIFF reader
])
def test_headers_declaring_too_many_pixels_are_refused_before_decoding(tmp_path, name, data):
    path = tmp_path / name
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning gives way to our check
        readers_refuse(path, f"{name}.* declares .*(above the 64.0 MP limit|more pixels than Pillow decodes)")
        with pytest.raises(PiSAError, match=LIMIT_VARIABLE):
            read_image(path)


def test_the_limit_can_be_raised(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    path.write_bytes(png_declaring(9000, 9000))
    monkeypatch.setenv(LIMIT_VARIABLE, str(100 * 2**20))
    _, size = probe_image(path)  # the header passes; its data is damaged, which decoding reports
    assert size == (9000, 9000)
    with pytest.raises(PiSAError, match="Cannot decode image"):
        read_image(path)
    monkeypatch.setenv(LIMIT_VARIABLE, "20")
    with pytest.raises(PiSAError, match="above the 0.0 MP limit"):
        read_image(rgb_png(tmp_path / "small.png"))  # 30 pixels


def tiff8() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, (6, 7, 3), dtype=np.uint8)).save(buffer, "TIFF")
    return buffer.getvalue()


@pytest.mark.parametrize(("tag", "kind", "value", "match"), [
    (273, 5, None, "malformed TIFF tag 273"),           # TypeError ('IFDRational' ...) inside Pillow's load
    (278, None, 0, "tile cannot extend outside image"),  # Pillow's ValueError about its tile
])
def test_8bit_tiff_with_a_malformed_layout(tmp_path, tag, kind, value, match):
    """fuzz_images: Pillow takes a TIFF's layout tags as they come: a fraction ends in a
    TypeError deep in its decoder, a strip of no rows in a ValueError about its tile."""
    path = tmp_path / "layout.tif"
    path.write_bytes(retag(tiff8(), tag, kind, value))
    with pytest.raises(PiSAError, match=match):
        read_image(path)
    with pytest.raises(PiSAError, match=match):
        to_pil_8bit(path)


def test_16bit_png_whose_pixel_data_fails_its_checksum(tmp_path):
    """fuzz_images: zlib.error ("incorrect data check") passed on by pypng's decoder."""
    import png

    buffer = io.BytesIO()
    png.Writer(7, 6, greyscale=False, bitdepth=16).write_array(buffer, RNG.integers(0, 65536, 6 * 7 * 3))
    data = buffer.getvalue()
    at = data.index(b"IDAT") - 4
    length = struct.unpack(">I", data[at:at + 4])[0]
    body = bytearray(data[at + 8:at + 8 + length])
    body[-1] ^= 0xFF  # the zlib stream's Adler-32
    path = tmp_path / "adler.png"
    path.write_bytes(data[:at] + chunk(b"IDAT", bytes(body)) + data[at + 12 + length:])
    with pytest.raises(PiSAError, match="adler.png.*incorrect data check"):
        read_image(path)
