"""A file given where weights are expected is called what it is (an image, a text file, an unknown
binary), never a malicious pickle unless it is one; `pisa-sr info` on an image says whether it
can carry settings."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from PIL import Image
from test_cli import model_args
from test_cli_outputs import one_line_error

from pisa_core.cli.main import main
from pisa_core.files.kinds import IMAGE, sniff, sniff_file

# Pillow format -> (file name, the name the error uses)
IMAGE_FORMATS = {"PNG": ("x.png", "PNG"), "JPEG": ("x.jpg", "JPEG"), "WEBP": ("x.webp", "WebP"),
                 "TIFF": ("x.tif", "TIFF"), "BMP": ("x.bmp", "BMP"), "GIF": ("x.gif", "GIF")}
UNKNOWN_BYTES = bytes([0x13, 0x37, 0x00, 0xfe, 0x42, 0x99, 0x00, 0x01]) * 64


def _image(folder, pillow_format: str):
    name, _ = IMAGE_FORMATS[pillow_format]
    path = folder / name
    pixels = (np.random.default_rng(0).random((10, 12, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, format=pillow_format)
    return path


def _not_weights(folder, what: str):
    """(file, the fragment its error must carry) for a file that is not weights."""
    if what in IMAGE_FORMATS:
        return _image(folder, what), f"is a {IMAGE_FORMATS[what][1]} image, not PiSA-SR weights"
    path = folder / f"{what}.pkl"  # the name promises a pickle: the content decides
    if what == "text":
        path.write_text("model: pisa_sr\nsee README for the download link\n")
        return path, "is a text file, not PiSA-SR weights"
    if what == "empty":
        path.write_bytes(b"")
        return path, "is an empty file, not PiSA-SR weights"
    path.write_bytes(UNKNOWN_BYTES)
    return path, "unknown format (it starts with the bytes 13 37 00 fe 42 99 00 01), not PiSA-SR weights"


NOT_WEIGHTS = [*IMAGE_FORMATS, "text", "empty", "unknown"]


@pytest.mark.parametrize("pillow_format", IMAGE_FORMATS)
def test_every_image_format_is_recognised_by_its_bytes(tmp_path, pillow_format):
    kind = sniff_file(_image(tmp_path, pillow_format))
    assert (kind.kind, kind.name) == (IMAGE, IMAGE_FORMATS[pillow_format][1])


def test_text_and_binary_are_told_apart():
    assert sniff("λ = 1.0\n".encode() + "é".encode()[:1]).kind == "text"  # a character cut at the end
    assert sniff(b"BMW 320i\n").kind == "text"  # 'BM' without a bitmap header is not a BMP
    assert sniff(b"a\x00b").kind == "unknown"
    assert sniff(pickle.dumps({"a": 1}, protocol=2)).kind == "pickle"


@pytest.mark.parametrize("what", NOT_WEIGHTS)
def test_info_and_convert_name_what_the_file_is(tmp_path, capsys, what):
    path, fragment = _not_weights(tmp_path, what)
    if what == "PNG":
        fragment = "without pisa-sr settings"  # a PNG may be an output of pisa-sr upscale
    elif what in IMAGE_FORMATS:
        fragment += ", and it carries no pisa-sr settings (only the PNG outputs of pisa-sr upscale"
    err = one_line_error(capsys, main(["info", str(path)]), str(path), fragment)
    assert "safety" not in err
    destination = tmp_path / "converted.safetensors"
    _, fragment = _not_weights(tmp_path, what)
    err = one_line_error(capsys, main(["convert", str(path), str(destination)]), str(path), fragment)
    assert "safety" not in err and not destination.exists()


@pytest.mark.parametrize("what", ["JPEG", "text", "unknown"])
def test_upscale_weights_error_names_the_file_kind(model_dir, tmp_path, capsys, what):
    path, fragment = _not_weights(tmp_path, what)
    source = _image(tmp_path, "PNG")
    args = [*model_args(model_dir), "--weights", str(path)]
    code = main(["upscale", str(source), "-o", str(tmp_path / "out"), *args])
    captured = capsys.readouterr()
    assert code == 2 and fragment in captured.err and "safety" not in captured.err, captured.err
    assert "failed: could not load the model" in captured.out, captured.out


def test_an_image_named_like_a_checkpoint_is_called_an_image(model_dir, tmp_path, capsys):
    base = tmp_path / "sd21.ckpt"
    base.write_bytes(_image(tmp_path, "JPEG").read_bytes())
    source = _image(tmp_path, "PNG")
    code = main(["upscale", str(source), "-o", str(tmp_path / "out"), *model_args(model_dir), "--base", str(base)])
    captured = capsys.readouterr()
    assert code == 2 and "is a JPEG image, not a Stable Diffusion checkpoint" in captured.err, captured.err


def test_a_damaged_pickle_is_corrupted_not_unsafe(tmp_path, capsys):
    buffer = io.BytesIO()
    pickle.dump({"unet_lora_pix": [1, 2, 3]}, buffer, protocol=2)
    damaged = tmp_path / "pisa_sr.pkl"
    damaged.write_bytes(buffer.getvalue()[:2] + b"\x99garbage" + buffer.getvalue()[2:])
    err = one_line_error(capsys, main(["info", str(damaged)]), str(damaged), "corrupted or not a torch.save file")
    assert "safety" not in err


def test_the_summary_line_says_what_stopped_the_run(model_dir, tmp_path, capsys):
    weights, _ = _not_weights(tmp_path, "text")
    source = _image(tmp_path, "PNG")
    out = tmp_path / "out"
    assert main(["upscale", str(source), "-o", str(out), *model_args(model_dir), "--weights", str(weights)]) == 2
    captured = capsys.readouterr()
    reason = f"could not load the model: '{weights}' is a text file, not PiSA-SR weights."
    assert captured.out.strip() == f"pisa-sr: 0 images written; failed: {reason}"
    assert captured.err.strip() == f"pisa-sr: error: {reason}"
    out.mkdir(exist_ok=True)  # the output folder is made before the model loads
    (out / "x.png").write_bytes(b"an earlier result")
    assert main(["upscale", str(source), "-o", str(out), *model_args(model_dir)]) == 2
    captured = capsys.readouterr()
    assert captured.out.strip() == (f"pisa-sr: 0 images written; failed: The output '{out / 'x.png'}' exists; pass "
                                    "--overwrite to replace it.")


def test_an_unknown_binary_is_called_unknown_whatever_its_name(tmp_path, capsys):
    path = tmp_path / "pisa_sr.safetensors"
    path.write_bytes(UNKNOWN_BYTES)
    one_line_error(capsys, main(["info", str(path)]), str(path),
                   "is a file of unknown format (it starts with the bytes 13 37 00 fe 42 99 00 01), not PiSA-SR weights")
