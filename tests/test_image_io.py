"""pisa_core.files.images: reading/writing 8/16-bit, gray, alpha, EXIF orientation, ICC colour
profiles, multi-frame and special files, input lists, header checks, 16-bit TIFF, region masks,
PNG text chunks, and writes that never leave a partial file."""

import io
import json
import logging
import os
import struct
import subprocess
import sys
import textwrap
import threading
import zlib

import numpy as np
import png
import pytest
import torch
from icc_profiles import (
    ADOBE_GAMMA,
    DISPLAY_P3,
    SRGB_PARA,
    gamma_curve,
    gray_profile,
    para_curve,
    rgb_profile,
    table_curve,
    table_rgb_profile,
)
from PIL import Image, ImageCms, features
from readonly import run_python_with_read_only
from tiff_files import tiff16_bytes

from pisa_core.errors import PiSAError
from pisa_core.files.atomic import atomic_output
from pisa_core.files.images import (
    SRGB,
    ImageInfo,
    check_output_folder,
    list_inputs,
    list_inputs_and_skipped,
    output_format,
    png_header,
    png_text,
    probe_image,
    quantize,
    read_image,
    read_mask,
    to_pil_8bit,
    write_image,
)
from pisa_core.files.images.icc import srgb_profile

RNG = np.random.default_rng(1234)


def levels_of(image, bit_depth):
    """Float 0..1 read back -> integer levels (exact for values written as levels / max)."""
    max_value = 65535 if bit_depth == 16 else 255
    return torch.round(image * max_value).to(torch.int64).numpy()


def random_levels(shape, bit_depth):
    high = 65536 if bit_depth == 16 else 256
    levels = RNG.integers(0, high, size=shape)
    levels.flat[0], levels.flat[1] = 0, high - 1  # both ends of the range
    return levels


def _chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png16_bytes(levels, exif=None):
    """A 16-bit PNG encoded here (Sub filter on every row), independent of pypng's writer."""
    h, w, c = levels.shape
    raw = levels.astype(">u2").reshape(h, w * c).view(np.uint8).astype(np.int16)
    bpp = 2 * c
    filtered = raw.copy()
    filtered[:, bpp:] = (raw[:, bpp:] - raw[:, :-bpp]) % 256
    rows = np.concatenate([np.ones((h, 1), np.int16), filtered], axis=1).astype(np.uint8)
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0))
    if exif is not None:
        out += _chunk(b"eXIf", exif)
    return out + _chunk(b"IDAT", zlib.compress(rows.tobytes())) + _chunk(b"IEND", b"")


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("channels, pil_mode", [(1, "L"), (2, "LA"), (3, "RGB"), (4, "RGBA")])
def test_png_8bit_round_trip_is_exact(tmp_path, channels, pil_mode):
    levels = random_levels((7, 9, channels), 8)
    path = tmp_path / "out.png"
    write_image(path, torch.from_numpy(levels / 255.0).float(), bit_depth=8)
    with Image.open(path) as im:
        assert im.mode == pil_mode
    image, info = read_image(path)
    assert image.dtype == torch.float32 and image.shape == (7, 9, channels)
    assert info == ImageInfo(mode=pil_mode, bit_depth=8, channels=channels,
                             has_alpha=channels in (2, 4), gray=channels in (1, 2))
    np.testing.assert_array_equal(levels_of(image, 8), levels)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_png_16bit_round_trip_keeps_all_16_bits(tmp_path, channels):
    levels = random_levels((6, 5, channels), 16)
    assert (levels % 257 != 0).any()  # values an 8-bit round trip could not keep
    path = tmp_path / "out16.png"
    write_image(path, torch.from_numpy(levels / 65535.0).float(), bit_depth=16)
    assert png_header(path)[0] == 16
    image, info = read_image(path)
    assert info.bit_depth == 16 and info.channels == channels
    assert info.has_alpha == (channels in (2, 4)) and info.gray == (channels in (1, 2))
    read_levels = levels_of(image, 16)
    assert (read_levels % 257 != 0).any()
    np.testing.assert_array_equal(read_levels, levels)


def test_16bit_gray_written_is_what_pillow_reads(tmp_path):
    levels = random_levels((4, 6, 1), 16)
    path = tmp_path / "g16.png"
    write_image(path, torch.from_numpy(levels / 65535.0).float(), bit_depth=16)
    with Image.open(path) as im:
        assert im.mode == "I;16"
        np.testing.assert_array_equal(np.asarray(im), levels[..., 0])


def test_reads_16bit_gray_png_written_by_pillow(tmp_path):
    levels = random_levels((5, 4), 16).astype(np.uint16)
    path = tmp_path / "pil16.png"
    Image.fromarray(levels).save(path)
    image, info = read_image(path)
    assert (info.bit_depth, info.channels, info.gray) == (16, 1, True)
    np.testing.assert_array_equal(levels_of(image, 16)[..., 0], levels)


@pytest.mark.parametrize("channels", [2, 3, 4])
def test_reads_filtered_16bit_color_png_encoded_independently(tmp_path, channels):
    levels = random_levels((9, 11, channels), 16)
    path = tmp_path / "sub16.png"
    path.write_bytes(png16_bytes(levels))
    with Image.open(path) as im:  # the reason for pypng: Pillow would give 8-bit samples here
        assert np.asarray(im).dtype == np.uint8
    image, info = read_image(path)
    assert info.bit_depth == 16 and info.channels == channels
    np.testing.assert_array_equal(levels_of(image, 16), levels)


def test_16bit_colour_key_transparency_becomes_alpha(tmp_path):
    levels = random_levels((3, 4, 3), 16)
    levels[1, 2] = (1000, 2000, 3000)
    path = tmp_path / "trns16.png"
    with open(path, "wb") as f:
        png.Writer(4, 3, greyscale=False, bitdepth=16, transparent=(1000, 2000, 3000)).write_array(f, levels.reshape(-1))
    image, info = read_image(path)
    assert info.channels == 4 and info.has_alpha
    alpha = levels_of(image, 16)[..., 3]
    expected = np.full((3, 4), 65535)
    expected[(levels == (1000, 2000, 3000)).all(axis=2)] = 0
    np.testing.assert_array_equal(alpha, expected)


def test_write_rounds_and_clamps(tmp_path):
    values = torch.tensor([0.4, 0.6, 254.4, 254.6, -3.0, 300.0]) / 255.0
    path = tmp_path / "round.png"
    write_image(path, values.view(1, 6, 1))
    image, _ = read_image(path)
    np.testing.assert_array_equal(levels_of(image, 8).ravel(), [0, 1, 254, 255, 0, 255])
    assert quantize(np.array([0.6 / 65535], np.float32), 16)[0] == 1


def test_write_creates_parent_folders(tmp_path):
    path = tmp_path / "a" / "b" / "c.png"
    write_image(path, torch.rand(3, 3, 3))
    assert path.is_file()


def test_jpeg_write_read(tmp_path):
    y, x = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 48), indexing="ij")
    image = torch.stack([x, y, (x + y) / 2], dim=2)
    path = tmp_path / "out.jpg"
    write_image(path, image, quality=95)
    with Image.open(path) as im:
        assert im.format == "JPEG"
    back, info = read_image(path)
    assert info == ImageInfo("RGB", 8, 3, False, False)
    assert back.shape == image.shape
    assert (back - image).abs().mean() < 0.01
    gray_path = tmp_path / "gray.jpeg"
    write_image(gray_path, image[..., :1])
    gray, info = read_image(gray_path)
    assert info.channels == 1 and (gray - image[..., :1]).abs().mean() < 0.01


@pytest.mark.skipif(not features.check("webp"), reason="Pillow built without WebP")
def test_webp_keeps_alpha(tmp_path):
    image = torch.rand(16, 16, 4)
    image[..., 3] = torch.where(torch.arange(16)[:, None] < 8, 0.0, 1.0).expand(16, 16)
    path = tmp_path / "out.webp"
    write_image(path, image)
    back, info = read_image(path)
    assert info.channels == 4 and info.has_alpha
    assert (back[..., 3] - image[..., 3]).abs().max() < 0.02


@pytest.mark.parametrize("suffix", [".tif", ".bmp"])
def test_reads_tiff_and_bmp(tmp_path, suffix):
    levels = random_levels((5, 7, 3), 8).astype(np.uint8)
    path = tmp_path / f"in{suffix}"
    Image.fromarray(levels, mode="RGB").save(path)
    image, info = read_image(path)
    assert info.bit_depth == 8 and info.channels == 3
    np.testing.assert_array_equal(levels_of(image, 8), levels)


def test_reads_16bit_gray_tiff(tmp_path):
    levels = random_levels((4, 5), 16).astype(np.uint16)
    path = tmp_path / "g16.tif"
    Image.fromarray(levels).save(path)
    image, info = read_image(path)
    assert (info.bit_depth, info.channels) == (16, 1)
    np.testing.assert_array_equal(levels_of(image, 16)[..., 0], levels)


def test_bilevel_image_reads_as_gray(tmp_path):
    bits = RNG.integers(0, 2, size=(6, 8)).astype(bool)
    path = tmp_path / "bits.png"
    Image.fromarray(bits).save(path)
    image, info = read_image(path)
    assert info.mode == "1" and info.channels == 1
    np.testing.assert_array_equal(levels_of(image, 8)[..., 0], bits * 255)


# ---------------------------------------------------------------- 16-bit TIFF


@pytest.mark.parametrize("layout", [
    {}, {"order": ">"}, {"planar": True}, {"tile": 16}, {"deflate": True, "predictor": True},
    {"tile": 16, "deflate": True, "predictor": True, "order": ">"}, {"planar": True, "deflate": True, "predictor": True},
])
@pytest.mark.parametrize("channels", [3, 4, 2])
def test_reads_16bit_tiff_at_16_bits(tmp_path, layout, channels):
    levels = random_levels((20, 37, channels), 16)
    assert (levels % 257 != 0).any()
    path = tmp_path / "in16.tif"
    path.write_bytes(tiff16_bytes(levels, **layout))
    if channels >= 3:
        with Image.open(path) as im:  # the reason for our reader: Pillow gives 8-bit samples here
            assert np.asarray(im).dtype == np.uint8
    image, info = read_image(path)
    assert (info.bit_depth, info.channels, info.has_alpha) == (16, channels, channels in (2, 4))
    np.testing.assert_array_equal(levels_of(image, 16), levels)
    assert probe_image(path) == (info, (20, 37))


def test_16bit_tiff_extra_samples(tmp_path):
    levels = random_levels((4, 5, 4), 16)
    levels[0, 0, 3] = 0
    path = tmp_path / "x.tif"
    path.write_bytes(tiff16_bytes(levels, extra=0))  # unspecified extra sample: not alpha
    image, info = read_image(path)
    assert info.channels == 3
    np.testing.assert_array_equal(levels_of(image, 16), levels[..., :3])
    premultiplied = levels.copy()
    premultiplied[..., 3] = 32768
    premultiplied[..., :3] //= 2
    path.write_bytes(tiff16_bytes(premultiplied, extra=1))
    image, info = read_image(path)
    assert info.channels == 4
    np.testing.assert_allclose(image[..., :3].numpy(), premultiplied[..., :3] / 32768, atol=1e-4)


@pytest.mark.parametrize("bit_depth", [8, 16])
@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_tiff_write_round_trip(tmp_path, bit_depth, channels):
    levels = random_levels((300, 1100, channels), bit_depth)  # several strips
    path = tmp_path / "out.tiff"
    write_image(path, torch.from_numpy(levels / (2 ** bit_depth - 1)).float(), bit_depth=bit_depth)
    image, info = read_image(path)
    assert (info.bit_depth, info.channels) == (bit_depth, channels)
    np.testing.assert_array_equal(levels_of(image, bit_depth), levels)
    if channels == 2 and bit_depth == 16:
        return  # Pillow has no 16-bit gray + alpha mode
    with Image.open(path) as im:  # an independent reader sees the same file
        pil = np.asarray(im).reshape(levels.shape)
    np.testing.assert_array_equal(pil, levels >> 8 if bit_depth == 16 and channels >= 3 else levels)


# ---------------------------------------------------------------- header checks


def test_probe_matches_read_without_decoding(tmp_path):
    for channels in (1, 2, 3, 4):
        for bit_depth in (8, 16):
            path = tmp_path / f"p{channels}_{bit_depth}.png"
            write_image(path, torch.rand(5, 7, channels), bit_depth=bit_depth)
            assert probe_image(path) == (read_image(path)[1], (5, 7))
    im, _, _ = _palette_image(transparent_index=1)
    im.save(tmp_path / "pal.png", transparency=1)
    Image.new("RGB", (9, 4)).save(tmp_path / "x.jpg")
    Image.fromarray(random_levels((3, 8), 16).astype(np.uint16)).save(tmp_path / "g16.tif")
    for name in ("pal.png", "x.jpg", "g16.tif"):
        info, size = probe_image(tmp_path / name)
        image, read_info = read_image(tmp_path / name)
        assert info == read_info and size == tuple(image.shape[:2])
    rotated = tmp_path / "rot.png"
    Image.new("RGB", (6, 2)).save(rotated, exif=exif_bytes(6))
    assert probe_image(rotated)[1] == (6, 2)
    good = tmp_path / "good.png"
    write_image(good, torch.rand(64, 64, 3))
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:200])
    assert probe_image(cut)[1] == (64, 64)  # the header is intact; read_image reports the damage
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(PiSAError, match="notes.png"):
        probe_image(text)


# ---------------------------------------------------------------- palette


def _palette_image(transparent_index=None):
    colours = RNG.integers(0, 256, size=(4, 3))
    index = RNG.integers(0, 4, size=(5, 6)).astype(np.uint8)
    im = Image.fromarray(index, mode="P")
    im.putpalette(colours.astype(np.uint8).ravel().tolist())
    if transparent_index is not None:
        im.info["transparency"] = transparent_index
    return im, colours, index


def test_palette_becomes_rgb(tmp_path):
    im, colours, index = _palette_image()
    path = tmp_path / "pal.png"
    im.save(path)
    image, info = read_image(path)
    assert info.mode == "P" and info.channels == 3 and not info.has_alpha
    np.testing.assert_array_equal(levels_of(image, 8), colours[index])


def test_palette_with_transparency_becomes_rgba(tmp_path):
    im, colours, index = _palette_image(transparent_index=2)
    path = tmp_path / "palt.png"
    im.save(path, transparency=2)
    image, info = read_image(path)
    assert info.channels == 4 and info.has_alpha
    levels = levels_of(image, 8)
    np.testing.assert_array_equal(levels[..., :3], colours[index])
    np.testing.assert_array_equal(levels[..., 3], np.where(index == 2, 0, 255))
    assert to_pil_8bit(path).mode == "RGBA"


# ---------------------------------------------------------------- EXIF orientation


def stored_for(upright, orientation):
    """What a camera stores so that applying EXIF `orientation` gives `upright` back."""
    return {
        1: upright,
        2: upright[:, ::-1],
        3: upright[::-1, ::-1],
        4: upright[::-1],
        5: upright.transpose(1, 0, 2),
        6: np.rot90(upright, 1),  # shown rotated 90 degrees clockwise
        7: upright.transpose(1, 0, 2)[::-1, ::-1],
        8: np.rot90(upright, -1),
    }[orientation].copy()


def exif_bytes(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_8bit(tmp_path, orientation):
    upright = random_levels((3, 5, 3), 8).astype(np.uint8)
    path = tmp_path / "exif.png"
    Image.fromarray(stored_for(upright, orientation)).save(path, exif=exif_bytes(orientation))
    image, _ = read_image(path)
    np.testing.assert_array_equal(levels_of(image, 8), upright)
    np.testing.assert_array_equal(np.asarray(to_pil_8bit(path)), upright)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_16bit(tmp_path, orientation):
    upright = random_levels((3, 5, 3), 16)
    path = tmp_path / "exif16.png"
    exif = exif_bytes(orientation)
    exif = exif[6:] if exif.startswith(b"Exif\x00\x00") else exif  # the eXIf chunk has no header
    path.write_bytes(png16_bytes(stored_for(upright, orientation), exif=exif))
    image, info = read_image(path)
    assert info.bit_depth == 16
    np.testing.assert_array_equal(levels_of(image, 16), upright)


def test_exif_orientation_jpeg(tmp_path):
    upright = np.zeros((16, 32, 3), np.uint8)
    upright[:, :16] = 255  # left half white
    path = tmp_path / "exif.jpg"
    Image.fromarray(stored_for(upright, 6)).save(path, exif=exif_bytes(6), quality=95)
    image, _ = read_image(path)
    assert image.shape == (16, 32, 3)
    assert image[:, :14].mean() > 0.9 and image[:, 18:].mean() < 0.1


# ---------------------------------------------------------------- to_pil_8bit


def test_to_pil_8bit_matches_pillow_convert(tmp_path):
    levels = random_levels((6, 7, 3), 8).astype(np.uint8)
    path = tmp_path / "rgb.png"
    Image.fromarray(levels).save(path)
    with Image.open(path) as im:
        expected = np.asarray(im.convert("RGB"))
    pil = to_pil_8bit(path)
    assert pil.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(pil), expected)
    gray_path = tmp_path / "gray.png"
    Image.fromarray(levels[..., 0]).save(gray_path)
    assert to_pil_8bit(gray_path).mode == "RGB"
    rgba_path = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([levels, levels[..., :1]])).save(rgba_path)
    assert to_pil_8bit(rgba_path).mode == "RGBA"


def test_to_pil_8bit_scales_16bit_gray_instead_of_clipping(tmp_path):
    levels = np.array([[0, 257 * 100, 65535, 300]], np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(levels).save(path)
    pil = to_pil_8bit(path)
    np.testing.assert_array_equal(np.asarray(pil)[..., 0], [[0, 100, 255, 1]])


# ---------------------------------------------------------------- region masks


def test_masks_gray_and_colour_by_brightness_with_white_exactly_one(tmp_path):
    Image.fromarray(np.array([[0, 128, 255]], np.uint8)).save(tmp_path / "l.png")
    assert torch.equal(read_mask(tmp_path / "l.png"), torch.tensor([[0.0, 128 / 255, 1.0]]))
    rgb = np.array([[[255, 255, 255], [0, 0, 0], [255, 0, 0]]], np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    mask = read_mask(tmp_path / "rgb.png")
    assert mask[0, 0] == 1.0 and mask[0, 1] == 0.0 and mask[0, 2] == pytest.approx(0.299, abs=1e-6)
    write_image(tmp_path / "l16.png", torch.tensor([[[0.0], [1.0]]]), bit_depth=16)
    assert torch.equal(read_mask(tmp_path / "l16.png"), torch.tensor([[0.0, 1.0]]))


def test_masks_with_transparency_use_alpha_unless_it_is_opaque_everywhere(tmp_path):
    black_half_opaque = np.zeros((1, 2, 4), np.uint8)
    black_half_opaque[0, 0, 3] = 255
    Image.fromarray(black_half_opaque).save(tmp_path / "rgba.png")
    assert torch.equal(read_mask(tmp_path / "rgba.png"), torch.tensor([[1.0, 0.0]]))  # opaque = inside
    write_image(tmp_path / "la16.png", torch.tensor([[[0.0, 0.25], [0.0, 1.0]]]), bit_depth=16)
    assert torch.equal(read_mask(tmp_path / "la16.png"), torch.tensor([[16384.0, 65535.0]]) / 65535)
    palette, _, _ = _palette_image(transparent_index=0)
    palette.save(tmp_path / "p.png")
    alpha = np.asarray(palette.convert("RGBA"))[..., 3] / 255
    assert torch.equal(read_mask(tmp_path / "p.png"), torch.from_numpy(alpha).float())
    drawing = np.zeros((1, 2, 4), np.uint8)  # an editor's RGBA export: opaque everywhere, white on the left
    drawing[0, 0, :3] = 255
    drawing[..., 3] = 255
    Image.fromarray(drawing).save(tmp_path / "opaque.png")
    assert torch.equal(read_mask(tmp_path / "opaque.png"), torch.tensor([[1.0, 0.0]]))


def test_masks_take_the_exif_orientation_like_inputs(tmp_path):
    upright = np.array([[0, 255, 255]], np.uint8)
    Image.fromarray(stored_for(upright[..., None], 6)[..., 0]).save(tmp_path / "m.png", exif=exif_bytes(6))
    assert torch.equal(read_mask(tmp_path / "m.png"), torch.tensor([[0.0, 1.0, 1.0]]))


# ---------------------------------------------------------------- PNG text chunks


@pytest.mark.parametrize("bit_depth, channels", [(8, 3), (8, 2), (16, 3), (16, 4)])
def test_png_text_chunks_round_trip_at_8_and_16_bit(tmp_path, bit_depth, channels):
    levels = random_levels((5, 6, channels), bit_depth)
    target = tmp_path / "t.png"
    text = {"pisa-sr": '{"λ_sem": 0.3, "mask": "visage é.png"}', "Comment": "two"}
    write_image(target, torch.from_numpy(levels / (2**bit_depth - 1)).float(), bit_depth=bit_depth, text=text)
    assert png_text(target) == text
    image, info = read_image(target)  # still a valid image with the same pixels
    assert info.bit_depth == bit_depth and np.array_equal(levels_of(image, bit_depth), levels)
    with Image.open(target) as im:  # Pillow reads the iTXt chunks too (before IDAT)
        assert im.text == text


def test_png_text_reads_text_and_compressed_chunks_anywhere(tmp_path):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("plain", "a")
    info.add_text("zipped", "b" * 200, zip=True)
    info.add_itxt("packed", "ü" * 200, zip=True)
    info.add(b"tEXt", b"late\0after the pixels", after_idat=True)
    Image.new("L", (3, 2)).save(tmp_path / "p.png", pnginfo=info)
    assert png_text(tmp_path / "p.png") == {"plain": "a", "zipped": "b" * 200, "packed": "ü" * 200,
                                            "late": "after the pixels"}
    write_image(tmp_path / "none.png", torch.rand(2, 2, 3))
    assert png_text(tmp_path / "none.png") == {}


def test_png_text_errors_name_the_file(tmp_path):
    with pytest.raises(PiSAError, match="bad keyword"):
        write_image(tmp_path / "k.png", torch.rand(2, 2, 3), text={" bad keyword": "x"})
    assert not any(tmp_path.iterdir())
    good = tmp_path / "good.png"
    write_image(good, torch.rand(8, 8, 3), text={"k": "v"})
    broken = tmp_path / "broken.png"
    data = bytearray(good.read_bytes())
    data[42] ^= 0xFF  # in the data of the first chunk after IHDR: its CRC no longer matches
    broken.write_bytes(bytes(data))
    with pytest.raises(PiSAError, match="broken.png"):
        png_text(broken)
    jpeg = tmp_path / "a.jpg"
    write_image(jpeg, torch.rand(8, 8, 3), text={"k": "v"})  # formats other than PNG carry no text
    with pytest.raises(PiSAError, match="a.jpg"):
        png_text(jpeg)


# ---------------------------------------------------------------- errors


def test_read_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.png"
    with pytest.raises(PiSAError, match="missing.png"):
        read_image(missing)
    with pytest.raises(PiSAError, match="is a folder, not an image file"):
        read_image(tmp_path)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(PiSAError, match="notes.png"):
        read_image(text)
    with pytest.raises(PiSAError, match="notes.png"):
        to_pil_8bit(text)


def test_truncated_files_raise(tmp_path):
    good = tmp_path / "good.png"
    write_image(good, torch.rand(64, 64, 3))
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(PiSAError, match="cut.png"):
        read_image(cut)
    good16 = tmp_path / "good16.png"
    write_image(good16, torch.rand(64, 64, 3), bit_depth=16)
    cut16 = tmp_path / "cut16.png"
    cut16.write_bytes(good16.read_bytes()[:300])
    with pytest.raises(PiSAError, match="cut16.png"):
        read_image(cut16)


def test_unsupported_formats_raise(tmp_path):
    gif = tmp_path / "anim.gif"
    Image.new("P", (4, 4)).save(gif)
    with pytest.raises(PiSAError, match="GIF"):
        read_image(gif)
    floats = tmp_path / "float.tif"
    Image.fromarray(np.ones((3, 3), np.float32), mode="F").save(floats)
    with pytest.raises(PiSAError, match="floating-point"):
        read_image(floats)


def test_write_errors(tmp_path):
    rgb, rgba = torch.rand(4, 4, 3), torch.rand(4, 4, 4)
    with pytest.raises(PiSAError, match="alpha"):
        write_image(tmp_path / "a.jpg", rgba)
    with pytest.raises(PiSAError, match="alpha"):
        write_image(tmp_path / "a.jpg", torch.rand(4, 4, 2))
    with pytest.raises(PiSAError, match="16 bits"):
        write_image(tmp_path / "a.jpg", rgb, bit_depth=16)
    with pytest.raises(PiSAError, match="8 or 16"):
        write_image(tmp_path / "a.png", rgb, bit_depth=12)
    with pytest.raises(PiSAError, match="extension"):
        write_image(tmp_path / "a.gif", rgb)
    with pytest.raises(PiSAError, match=r"\[H, W, C\]"):
        write_image(tmp_path / "a.png", torch.rand(1, 4, 4, 3))
    with pytest.raises(PiSAError, match=r"\[H, W, C\]"):
        write_image(tmp_path / "a.png", torch.rand(4, 4, 5))
    with pytest.raises(PiSAError, match="NaN"):
        write_image(tmp_path / "a.png", torch.full((2, 2, 3), float("nan")))
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------- list_inputs


def _touch_images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (2, 2)).save(folder / name)


def test_list_inputs_folder_is_sorted_and_not_recursive(tmp_path):
    _touch_images(tmp_path, ["b.png", "a.JPG", "c.webp" if features.check("webp") else "c.bmp"])
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden.png").write_bytes((tmp_path / "b.png").read_bytes())
    _touch_images(tmp_path / "sub", ["d.png"])
    found = list_inputs([tmp_path])
    assert [p.name for p in found] == sorted(["b.png", "a.JPG", found[-1].name])
    assert all(p.parent == tmp_path for p in found)


def test_list_inputs_files_globs_and_dedup(tmp_path):
    _touch_images(tmp_path, ["x2.png", "x1.png", "y.png"])
    _touch_images(tmp_path / "sub", ["x3.png"])
    (tmp_path / "x9.txt").write_text("x")
    found = list_inputs([str(tmp_path / "y.png"), str(tmp_path / "x*"), tmp_path / "x1.png"])
    assert [p.name for p in found] == ["y.png", "x1.png", "x2.png"]
    recursive = list_inputs(str(tmp_path / "**" / "x*.png"))
    assert sorted(p.name for p in recursive) == ["x1.png", "x2.png", "x3.png"]
    explicit = tmp_path / "odd.dat"
    explicit.write_text("x")
    assert list_inputs([explicit]) == [explicit]  # a named file is taken as given


def test_list_inputs_errors(tmp_path):
    with pytest.raises(PiSAError, match="nothing-here"):
        list_inputs([tmp_path / "nothing-here.png"])
    with pytest.raises(PiSAError, match=r"\*.tif"):
        list_inputs([str(tmp_path / "*.tif")])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PiSAError, match="no image files"):
        list_inputs([empty])
    with pytest.raises(PiSAError, match="No input"):
        list_inputs([])


# ---------------------------------------------------------------- safe writes


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_an_interrupted_write_leaves_nothing_behind(tmp_path, monkeypatch):
    """Ctrl-C in the middle of the encoder: no file under the final name, no temporary file, and
    an existing file is left as it was."""
    def half_then_interrupt(self, outfile, pixels):
        outfile.write(b"\x89PNG\r\n\x1a\n partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(png.Writer, "write_array", half_then_interrupt)  # the third-party encoder
    target = tmp_path / "out.png"
    with pytest.raises(KeyboardInterrupt):
        write_image(target, torch.rand(8, 8, 3), bit_depth=16)
    assert _leftovers(tmp_path) == []
    target.write_bytes(b"previous")
    with pytest.raises(KeyboardInterrupt):
        write_image(target, torch.rand(8, 8, 3), bit_depth=16)
    assert _leftovers(tmp_path) == ["out.png"] and target.read_bytes() == b"previous"


@pytest.mark.skipif(sys.platform != "linux", reason="uses RLIMIT_FSIZE and SIGXFSZ (Linux)")
def test_a_failed_write_is_one_line_and_leaves_nothing_behind(tmp_path):
    """A write that runs out of room (a file-size limit stands in for a full disk): one-line
    PiSAError naming the file, no partial file under any name."""
    script = textwrap.dedent(f"""
        import resource, signal, sys, torch
        from pisa_core.errors import PiSAError
        from pisa_core.files.images import write_image
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        try:
            write_image({str(tmp_path / "big.png")!r}, torch.rand(256, 256, 3))
        except PiSAError as error:
            print(error)
            sys.exit(3)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 3, done.stderr[-2000:]
    assert "big.png" in done.stdout and len(done.stdout.strip().splitlines()) == 1
    assert _leftovers(tmp_path) == []


def test_atomic_output_refuses_to_replace_without_overwrite(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with pytest.raises(PiSAError, match="exists"), atomic_output(target, overwrite=False) as f:
        f.write(b"new")
    assert _leftovers(tmp_path) == ["a.bin"] and target.read_bytes() == b"old"
    with atomic_output(target) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new" and _leftovers(tmp_path) == ["a.bin"]


def test_check_output_folder(tmp_path):
    nested = check_output_folder(tmp_path / "a" / "b")
    assert nested.is_dir() and _leftovers(nested) == []
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    with pytest.raises(PiSAError, match="is a file"):
        check_output_folder(blocker)
    with pytest.raises(PiSAError, match="file.txt"):
        check_output_folder(blocker / "sub")


def test_check_output_folder_read_only(tmp_path):
    folder = tmp_path / "ro"
    code = (f"import torch; from pathlib import Path; from pisa_core.errors import PiSAError\n"
            f"from pisa_core.files.images import check_output_folder, write_image\n"
            f"folder = Path({str(folder)!r})\n"
            f"for attempt in (lambda: check_output_folder(folder), "
            f"lambda: write_image(folder / 'x.png', torch.rand(2, 2, 3))):\n"
            f"    try:\n        attempt()\n        print('written')\n"
            f"    except PiSAError as error:\n        print('PiSAError:', error)\n")
    done = run_python_with_read_only(folder, code)
    if done is None:
        pytest.skip("this machine can make no folder read-only for root (no unshare -m)")
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("PiSAError:") and str(folder) in line for line in lines), \
        (done.stdout, done.stderr)
    assert not list(folder.iterdir())


def test_output_format(tmp_path):
    assert output_format(tmp_path / "a.TIF", 16, 4) == "TIFF"
    assert output_format(tmp_path / "a.png", 16, 2) == "PNG"
    with pytest.raises(PiSAError, match="16 bits"):
        output_format(tmp_path / "a.webp", 16)
    with pytest.raises(PiSAError, match="alpha"):
        output_format(tmp_path / "a.jpeg", 8, 4)
    with pytest.raises(PiSAError, match="extension"):
        output_format(tmp_path / "a.bmp")


# ---------------------------------------------------------------- ICC colour profiles

WIDE_PROFILES = {
    "adobe-gamma": lambda: rgb_profile(),
    "p3-parametric": lambda: rgb_profile(DISPLAY_P3, para_curve(SRGB_PARA), "Test P3"),
    "adobe-table": lambda: rgb_profile(curve=table_curve(np.linspace(0, 1, 1024) ** ADOBE_GAMMA)),
}


def lcms_srgb(levels, profile):
    """8-bit RGB levels in `profile` -> sRGB by littleCMS (Pillow's ImageCms), as floats."""
    source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
    target = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    out = ImageCms.profileToProfile(Image.fromarray(levels), source, target, outputMode="RGB")
    return np.asarray(out, dtype=np.float64) / 255


def near_gray_levels(shape, bit_depth, seed=5):
    """Colours of low saturation (inside the sRGB gamut in any of the test profiles), dark to light."""
    rng = np.random.default_rng(seed)
    top = 65535 if bit_depth == 16 else 255
    gray = rng.uniform(0.05, 0.8, shape[:2] + (1,))
    values = gray * rng.uniform(0.9, 1.1, shape)  # near-neutral chromaticity at any brightness
    return np.round(values * top).astype(np.uint16 if bit_depth == 16 else np.uint8)


def png16_with_profile(levels, profile):
    """A 16-bit PNG (encoded by this test module) with an iCCP chunk before the pixel data."""
    plain = png16_bytes(levels)
    iccp = _chunk(b"iCCP", b"test\0\0" + zlib.compress(profile))
    return plain[:33] + iccp + plain[33:]  # after the signature and IHDR


def png16_levels(path):
    with open(path, "rb") as f:
        width, height, rows, meta = png.Reader(file=f).read()
        return np.vstack([np.asarray(row, np.uint16) for row in rows]).reshape(height, width, meta["planes"])


@pytest.mark.parametrize("name", WIDE_PROFILES)
@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp", ".tif"])
def test_wide_gamut_input_is_converted_to_srgb_like_littlecms(tmp_path, name, suffix):
    """PNG iCCP, JPEG APP2, WebP ICCP and TIFF tag 34675: the same colours as littleCMS gives."""
    profile = WIDE_PROFILES[name]()
    levels = RNG.integers(0, 256, (16, 24, 3)).astype(np.uint8)
    path = tmp_path / f"wide{suffix}"
    options = {"quality": 100, "subsampling": 0} if suffix == ".jpg" else {"lossless": True} if suffix == ".webp" else {}
    Image.fromarray(levels).save(path, icc_profile=profile, **options)
    with Image.open(path) as im:
        decoded = np.asarray(im.convert("RGB"))  # what the file holds after lossy coding
    image, info = read_image(path)
    assert info.icc_profile == profile and info.bit_depth == 8
    np.testing.assert_allclose(image.numpy(), lcms_srgb(decoded, profile), rtol=0, atol=1.01 / 255)


@pytest.mark.parametrize("name", WIDE_PROFILES)
@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_wide_gamut_round_trip_keeps_colours_and_profile(tmp_path, name, suffix):
    profile = WIDE_PROFILES[name]()
    levels = near_gray_levels((12, 20, 3), 8)
    source = tmp_path / f"in{suffix}"
    Image.fromarray(levels).save(source, icc_profile=profile)
    image, info = read_image(source)
    assert 0 < float(image.min()) and float(image.max()) < 1  # inside the sRGB gamut: nothing clipped
    out = tmp_path / f"out{suffix}"
    write_image(out, image, icc_profile=info.icc_profile)
    with Image.open(out) as im:
        assert im.info["icc_profile"] == profile  # the same bytes, read back by Pillow
        written = np.asarray(im.convert("RGB"))
    assert np.abs(written.astype(int) - levels).max() <= 2


@pytest.mark.parametrize("suffix", [".jpg", ".webp"])
def test_lossy_outputs_carry_the_profile(tmp_path, suffix):
    profile = rgb_profile()
    image = torch.tensor([0.6, 0.55, 0.5]).expand(16, 16, 3)  # flat: lossy coding keeps it closely
    out = tmp_path / f"out{suffix}"
    write_image(out, image, icc_profile=profile, quality=100)
    back, info = read_image(out)
    assert info.icc_profile == profile
    assert float((back - image).abs().mean()) < 2 / 255  # lossy coding: compared on average


@pytest.mark.parametrize("name", WIDE_PROFILES)
@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_input_with_a_profile_keeps_16_bits(tmp_path, name, suffix):
    profile = WIDE_PROFILES[name]()
    levels = near_gray_levels((48, 64, 3), 16)
    levels[0] = np.linspace(2000, 2400, 64, dtype=np.uint16)[:, None]  # a shallow dark ramp: 400 levels
    source = tmp_path / f"in{suffix}"
    if suffix == ".png":
        source.write_bytes(png16_with_profile(levels, profile))
    else:
        write_image(source, torch.from_numpy(levels / 65535.0).float(), bit_depth=16)  # untagged 16-bit TIFF,
        plain, info = read_image(source)
        assert info.icc_profile is None
        write_image(source, plain, bit_depth=16, icc_profile=profile)  # then tagged: values converted from sRGB
        levels = levels_of(read_image_raw_tiff(source), 16)
    image, info = read_image(source)
    assert info.bit_depth == 16 and info.icc_profile == profile
    ramp = levels_of(image[0, :, 0], 16)
    assert len(np.unique(ramp)) > 50 and np.all(np.diff(ramp) >= 0)  # finer than 8-bit steps of 257
    eight_bit = np.round(levels / 257).astype(np.uint8)
    np.testing.assert_allclose(image.numpy(), lcms_srgb(eight_bit, profile), rtol=0, atol=2 / 255)
    out = tmp_path / f"out{suffix}"
    write_image(out, image, bit_depth=16, icc_profile=info.icc_profile)
    written = png16_levels(out) if suffix == ".png" else levels_of(read_image_raw_tiff(out), 16)
    assert np.abs(written.astype(int) - levels.astype(int)).max() <= 2  # of 65535
    with Image.open(out) as im:
        assert im.info["icc_profile"] == profile


def read_image_raw_tiff(path):
    """The samples of a 16-bit TIFF as stored (no colour conversion), by stripping its profile tag."""
    from pisa_core.files.images.tiff import _read_tiff16, _tiff16

    tiff = _tiff16(path)
    return _read_tiff16(path, tiff)[0]


def test_gray_image_with_a_gray_profile(tmp_path):
    profile = gray_profile(gamma_curve(1.8))
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    source = tmp_path / "gray.png"
    Image.fromarray(levels).save(source, icc_profile=profile)
    image, info = read_image(source)
    assert info.gray and info.channels == 1 and info.icc_profile == profile
    luminance = (levels / 255.0) ** 1.8  # the profile's Y; sRGB gray of the same luminance (IEC 61966-2-1)
    expected = np.where(luminance <= 0.0031308, 12.92 * luminance, 1.055 * luminance ** (1 / 2.4) - 0.055)
    np.testing.assert_allclose(image[..., 0].numpy(), expected, rtol=0, atol=0.3 / 255)
    out = tmp_path / "out.png"
    write_image(out, image, icc_profile=info.icc_profile)
    with Image.open(out) as im:
        assert im.mode == "L" and im.info["icc_profile"] == profile
        assert np.abs(np.asarray(im).astype(int) - levels).max() <= 1


def test_16bit_gray_with_a_gray_profile_keeps_16_bits(tmp_path):
    profile = gray_profile(gamma_curve(1.8))
    levels = np.linspace(1000, 1500, 40 * 50).astype(np.uint16).reshape(40, 50, 1)
    source = tmp_path / "gray16.png"
    source.write_bytes(png16_with_profile(levels, profile))
    image, info = read_image(source)
    assert info.bit_depth == 16 and info.gray and info.icc_profile == profile
    assert len(np.unique(levels_of(image, 16))) > 400
    out = tmp_path / "out.png"
    write_image(out, image, bit_depth=16, icc_profile=info.icc_profile)
    assert np.abs(png16_levels(out).astype(int) - levels.astype(int)).max() <= 2


def test_colours_outside_srgb_are_clipped_like_littlecms(tmp_path):
    profile = rgb_profile()
    levels = np.array([[[0, 255, 0], [0, 0, 255], [255, 0, 0], [0, 180, 90]]], dtype=np.uint8)  # Adobe primaries
    source = tmp_path / "saturated.png"
    Image.fromarray(levels).save(source, icc_profile=profile)
    image, _ = read_image(source)
    assert float(image.min()) == 0.0 and float(image.max()) > 1 - 1e-6  # clipped at the gamut's edge
    np.testing.assert_allclose(image.numpy(), lcms_srgb(levels, profile), rtol=0, atol=1.01 / 255)


def test_table_profiles_go_through_littlecms_at_8_bits(tmp_path, caplog):
    profile = table_rgb_profile()  # about the colours of a matrix profile with linear tone curves
    levels = np.random.default_rng(11).integers(0, 256, (8, 12, 4)).astype(np.uint8)
    source = tmp_path / "table.png"
    Image.fromarray(levels).save(source, icc_profile=profile)
    with caplog.at_level(logging.INFO, logger="pisa_core"):
        image, info = read_image(source)
    assert info.icc_profile == srgb_profile() and info.channels == 4  # written as sRGB; alpha kept
    assert "table.png: converted from its ICC profile 'Test table RGB' to sRGB" in caplog.text
    expected = lcms_srgb(np.ascontiguousarray(levels[..., :3]), profile)
    np.testing.assert_allclose(image[..., :3].numpy(), expected, rtol=0, atol=1e-6)  # littleCMS's own result
    assert np.abs(expected - lcms_srgb(np.ascontiguousarray(levels[..., :3]), rgb_profile(curve=gamma_curve(1.0)))
                  ).mean() < 0.5 / 255  # and that is the colours the table describes
    np.testing.assert_array_equal(levels_of(image[..., 3], 8), levels[..., 3])
    (tmp_path / "table16.png").write_bytes(png16_with_profile(levels[..., :3].astype(np.uint16) * 257, profile))
    with pytest.raises(PiSAError, match="table16.png' has 16-bit samples and a table-based ICC profile"):
        read_image(tmp_path / "table16.png")


def test_srgb_output_is_tagged_and_not_converted(tmp_path):
    image = torch.rand(6, 7, 3)
    write_image(tmp_path / "rgb.png", image, icc_profile=SRGB)
    write_image(tmp_path / "rgb16.tif", image, bit_depth=16, icc_profile=SRGB)
    write_image(tmp_path / "rgb.jpg", image, icc_profile=SRGB)
    for name in ("rgb.png", "rgb16.tif", "rgb.jpg"):
        with Image.open(tmp_path / name) as im:
            assert im.info["icc_profile"] == srgb_profile()
    back, info = read_image(tmp_path / "rgb.png")
    np.testing.assert_array_equal(levels_of(back, 8), quantize(image.numpy(), 8))  # values as given
    assert info.icc_profile == srgb_profile()
    write_image(tmp_path / "again16.tif", back, bit_depth=16, icc_profile=info.icc_profile)  # the bytes: as SRGB
    again, _ = read_image(tmp_path / "again16.tif")
    assert torch.equal(again, back)
    write_image(tmp_path / "gray.png", torch.rand(6, 7, 1), icc_profile=SRGB)
    with Image.open(tmp_path / "gray.png") as im:
        assert "icc_profile" not in im.info and im.info.get("srgb") == 0  # the sRGB chunk: an RGB profile is not allowed
    write_image(tmp_path / "plain.png", image)
    with Image.open(tmp_path / "plain.png") as im:
        assert "icc_profile" not in im.info and "srgb" not in im.info  # None: untagged, as before


def test_profile_text_chunks_and_16_bits_together(tmp_path):
    profile = rgb_profile()
    image = torch.rand(5, 6, 3) * 0.5 + 0.25
    for bit_depth in (8, 16):
        out = tmp_path / f"out{bit_depth}.png"
        write_image(out, image, bit_depth=bit_depth, text={"pisa-sr": '{"a": 1}'}, icc_profile=profile)
        assert png_text(out) == {"pisa-sr": '{"a": 1}'}
        with Image.open(out) as im:
            assert im.info["icc_profile"] == profile


def test_unusable_profiles_are_reported_not_silent(tmp_path, caplog):
    broken = tmp_path / "broken.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(broken, icc_profile=b"this is no ICC profile")
    zero = tmp_path / "zero.png"  # a parametric curve with a = 0, and colorants that are all zero
    bad_curve = b"para\0\0\0\0" + struct.pack(">HH", 1, 0) + struct.pack(">3i", 2 << 16, 0, 0)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(zero, icc_profile=rgb_profile(curve=bad_curve))
    flat = tmp_path / "flat.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(flat, icc_profile=rgb_profile(((0, 0, 0),) * 3))
    mismatched = tmp_path / "mismatched.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(mismatched, icc_profile=rgb_profile())
    with caplog.at_level(logging.WARNING, logger="pisa_core"):
        for path in (broken, zero, flat, mismatched):
            image, info = read_image(path)
            assert info.icc_profile is None and float(image.abs().max()) == 0.0
    assert "broken.png: its embedded ICC profile is ignored" in caplog.text
    assert "zero.png: its embedded ICC profile is ignored (its parametric curve (type 1" in caplog.text
    assert "flat.png: its embedded ICC profile is ignored (its colorants are not independent" in caplog.text
    assert "mismatched.png: its ICC profile 'Test wide RGB' is ignored (a RGB profile on a gray image)" in caplog.text


def test_gray_webp_output_of_a_gray_profile_is_written_as_srgb(tmp_path, caplog):
    image = torch.linspace(0, 1, 64).reshape(8, 8, 1)
    with caplog.at_level(logging.INFO, logger="pisa_core"):
        write_image(tmp_path / "gray.webp", image, icc_profile=gray_profile(), quality=100)
    assert "gray.webp: WebP stores gray as RGB, which the gray profile 'Test gray' does not fit" in caplog.text
    with Image.open(tmp_path / "gray.webp") as im:
        assert im.info["icc_profile"] == srgb_profile()


def test_writing_in_a_profile_that_does_not_fit_is_one_line(tmp_path):
    lab = ImageCms.ImageCmsProfile(ImageCms.createProfile("LAB")).tobytes()
    for image, profile, fragment in ((torch.rand(4, 4, 3), lab, "not a matrix profile for a colour PNG"),
                                     (torch.rand(4, 4, 1), rgb_profile(), "not a matrix profile for a gray PNG"),
                                     (torch.rand(4, 4, 3), b"garbage", "with its ICC profile")):
        with pytest.raises(PiSAError, match=fragment) as error:
            write_image(tmp_path / "x.png", image, icc_profile=profile)
        assert "x.png" in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "x.png").exists()


def test_masks_are_read_as_stored_without_their_profile(tmp_path):
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    path = tmp_path / "mask.png"
    Image.fromarray(levels).save(path, icc_profile=gray_profile(gamma_curve(1.8)))
    np.testing.assert_array_equal(levels_of(read_mask(path), 8), levels)
    assert float((read_image(path)[0][..., 0] - read_mask(path)).abs().max()) > 10 / 255  # images: converted


def test_to_pil_8bit_converts_the_profile_too(tmp_path):
    source = tmp_path / "wide.png"
    Image.fromarray(near_gray_levels((8, 8, 3), 8)).save(source, icc_profile=rgb_profile())
    image, _ = read_image(source)
    np.testing.assert_array_equal(np.asarray(to_pil_8bit(source)), quantize(image.numpy(), 8))
    gray = tmp_path / "gray.png"
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4).save(gray, icc_profile=gray_profile())
    image, _ = read_image(gray)
    as_pil = np.asarray(to_pil_8bit(gray))
    assert as_pil.shape == (8, 8, 3)
    np.testing.assert_array_equal(as_pil, np.repeat(quantize(image.numpy(), 8), 3, axis=2))


def test_rgb_profile_adobe_gamma_is_what_the_helper_claims():
    """The test profiles themselves: littleCMS reads the colorants and the Adobe gamma back."""
    cms = ImageCms.ImageCmsProfile(io.BytesIO(rgb_profile())).profile
    assert cms.is_matrix_shaper and cms.xcolor_space.strip() == "RGB"
    np.testing.assert_allclose(cms.red_colorant[0], (0.60974, 0.31111, 0.01947), atol=1e-4)
    assert abs(ADOBE_GAMMA - 2.2) < 0.001


# ---------------------------------------------------------------- multi-frame and special files


def test_animated_and_multi_page_files_are_refused_with_their_frame_count(tmp_path):
    frames = [Image.new("RGB", (8, 8), colour) for colour in ("red", "green", "blue")]
    cases = {"anim.webp": {}, "anim.png": {}, "pages.tif": {}}
    for name, extra in cases.items():
        frames[0].save(tmp_path / name, save_all=True, append_images=frames[1:], **extra)
    for name in cases:
        for function in (read_image, probe_image, to_pil_8bit):
            with pytest.raises(PiSAError, match=rf"{name}' has 3 frames \(an animation or a multi-page file\)"):
                function(tmp_path / name)
    levels = RNG.integers(0, 65536, (4, 5, 3)).astype(np.uint16)
    first = tmp_path / "one16.tif"
    write_image(first, torch.from_numpy(levels / 65535.0).float(), bit_depth=16)
    with Image.open(first) as im:
        im.save(tmp_path / "pages16.tif", save_all=True, append_images=[im.copy()])  # 16-bit RGB, 2 pages
    with pytest.raises(PiSAError, match="pages16.tif' has 2 frames"):
        read_image(tmp_path / "pages16.tif")


def test_a_tiff_thumbnail_is_not_a_second_frame(tmp_path):
    path = tmp_path / "thumb.tif"
    thumbnail = Image.new("RGB", (4, 4), "red")
    thumbnail.encoderinfo = {"tiffinfo": {254: 1}}  # NewSubfileType: a reduced-resolution copy
    Image.new("RGB", (16, 16), "red").save(path, save_all=True, append_images=[thumbnail])
    with Image.open(path) as im:
        assert im.n_frames == 2
        im.seek(1)
        assert im.tag_v2.get(254) == 1
    image, _ = read_image(path)
    assert image.shape == (16, 16, 3)


def test_a_phone_mpo_with_a_preview_frame_is_one_image(tmp_path):
    path = tmp_path / "phone.jpg"
    Image.new("RGB", (32, 24), "red").save(path, format="MPO", save_all=True,
                                           append_images=[Image.new("RGB", (16, 12), "red")])
    with Image.open(path) as im:
        assert im.format == "MPO" and im.n_frames == 2
    image, _ = read_image(path)
    assert image.shape == (24, 32, 3)


def test_special_files_get_an_accurate_error_and_never_block(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.png"
    folder.mkdir()
    broken = tmp_path / "gone.png"
    broken.symlink_to(tmp_path / "missing.png")
    cases = {fifo: "is a named pipe (FIFO), not an image file", folder: "is a folder, not an image file",
             broken: "is a broken symbolic link, not an image file"}
    if os.path.exists("/dev/zero"):
        cases[type(tmp_path)("/dev/zero")] = "is a character device, not an image file"  # a Path
    done = {}

    def run():
        for path in cases:
            for function in (read_image, probe_image, to_pil_8bit, read_mask):
                with pytest.raises(PiSAError) as error:
                    function(path)
                done[(path, function)] = str(error.value)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "reading a special file blocked"
    for (path, _), message in done.items():
        assert message == f"Image path {str(path)!r} {cases[path]}."
    assert len(done) == 4 * len(cases)


def test_list_inputs_reports_what_a_folder_holds_besides_images(tmp_path):
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    Image.new("P", (4, 4)).save(tmp_path / "b.gif")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / ".hidden.gif").write_bytes(b"")
    (tmp_path / "sub").mkdir()
    os.mkfifo(tmp_path / "pipe.png")
    files, skipped = list_inputs_and_skipped(tmp_path)
    assert files == [tmp_path / "a.png"]
    assert skipped == [(tmp_path / "b.gif", "unsupported format .gif"),
                       (tmp_path / "notes.txt", "unsupported format .txt"),
                       (tmp_path / "pipe.png", "a named pipe (FIFO), not an image file")]
    files, skipped = list_inputs_and_skipped(str(tmp_path / "*"))
    assert files == [tmp_path / "a.png"] and [p.name for p, _ in skipped] == ["b.gif", "notes.txt", "pipe.png"]
    assert list_inputs(tmp_path) == files
    files, skipped = list_inputs_and_skipped([tmp_path / "pipe.png", tmp_path / "a.png"])  # given: judged later
    assert files == [tmp_path / "pipe.png", tmp_path / "a.png"] and skipped == []


def test_the_python_api_reads_images_masks_and_png_settings(tmp_path):
    """pisa_core.read_image / read_mask / read_png_settings are the documented, stable readers."""
    import pisa_core

    image = torch.from_numpy(RNG.random((6, 5, 3), dtype=np.float32))
    path = tmp_path / "settings.png"
    write_image(path, image, text={"pisa-sr": json.dumps({"lambda_sem": 0.5})})
    read, info = pisa_core.read_image(path)
    assert read.shape == (6, 5, 3) and info.bit_depth == 8
    assert pisa_core.read_mask(path).shape == (6, 5)
    assert pisa_core.read_png_settings(path) == {"lambda_sem": 0.5}
    write_image(tmp_path / "plain.png", image)
    with pytest.raises(PiSAError, match="without pisa-sr settings"):
        pisa_core.read_png_settings(tmp_path / "plain.png")
    write_image(tmp_path / "list.png", image, text={"pisa-sr": "[1, 2]"})
    with pytest.raises(PiSAError, match="not a JSON object"):
        pisa_core.read_png_settings(tmp_path / "list.png")
