"""pisa-sr upscale with inputs that carry colour profiles, several frames, or are no image files:
the output's profile (--output-profile), refusals before the model loads, and the summary line
naming what a folder held besides images."""

from __future__ import annotations

import os

import numpy as np
import pytest
from icc_profiles import rgb_profile
from PIL import Image
from test_cli import model_args, photos  # noqa: F401 (photos is a fixture)
from test_cli_outputs import NO_MODEL, one_line_error

from pisa_core.cli.main import main
from pisa_core.files.images import png_text, read_image
from pisa_core.files.images.icc import srgb_profile


def wide_gamut_photo(folder):
    g = np.random.default_rng(3)
    levels = (g.uniform(0.2, 0.7, (4, 4, 1)) * g.uniform(0.9, 1.1, (4, 4, 3)) * 255).astype(np.uint8)
    path = folder / "wide.png"
    Image.fromarray(levels).resize((12, 10), Image.BILINEAR).save(path, icc_profile=rgb_profile())
    return path


def test_output_carries_the_input_profile_or_srgb(model_dir, tmp_path, capsys):
    source = wide_gamut_photo(tmp_path)
    outputs = {}
    for choice in ("input", "srgb"):
        outputs[choice] = tmp_path / f"out-{choice}.png"
        args = ["upscale", str(source), "-o", str(outputs[choice]), "--output-profile", choice, "--bit-depth", "16",
                *model_args(model_dir)]
        assert main(args) == 0, capsys.readouterr().err
    with Image.open(outputs["input"]) as im:
        assert im.info["icc_profile"] == rgb_profile()
    with Image.open(outputs["srgb"]) as im:
        assert im.info["icc_profile"] == srgb_profile()
    for path in outputs.values():
        assert "pisa-sr" in png_text(path)  # the settings chunk is still written
    # the same result, once converted back into the profile (16 bits: no rounding to speak of) and once left in sRGB
    as_input, _ = read_image(outputs["input"])
    as_srgb, _ = read_image(outputs["srgb"])
    assert float((as_input - as_srgb).abs().max()) <= 0.5 / 255


def test_output_profile_help_says_what_each_choice_does(capsys):
    with pytest.raises(SystemExit):
        main(["upscale", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--output-profile {input,srgb}" in help_text
    assert "input (converted back from sRGB to the input's profile" in help_text and "srgb (left in sRGB" in help_text


def test_files_in_a_folder_that_are_not_images_are_named_in_the_summary(model_dir, photos, tmp_path,  # noqa: F811
                                                                         capsys):
    frames = [Image.new("RGB", (8, 8), colour) for colour in ("red", "green")]
    frames[0].save(photos / "anim.gif", save_all=True, append_images=frames[1:])
    (photos / "notes.txt").write_text("not an image")
    assert main(["upscale", str(photos), "-o", str(tmp_path / "out"), *model_args(model_dir)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip().endswith("; 2 skipped as not images: anim.gif (unsupported format .gif), "
                                         "notes.txt (unsupported format .txt)")
    assert "2 images written" in captured.out
    assert f"skipping {photos / 'anim.gif'}: unsupported format .gif (inputs are .png" in captured.err


def test_an_animated_input_is_refused_before_the_model_loads(tmp_path, capsys):
    frames = [Image.new("RGB", (8, 8), colour) for colour in ("red", "green", "blue")]
    source = tmp_path / "anim.webp"
    frames[0].save(source, save_all=True, append_images=frames[1:])
    code = main(["upscale", str(source), "-o", str(tmp_path / "out.png"), *NO_MODEL, "--weights", "x"])
    one_line_error(capsys, code, "anim.webp' has 3 frames (an animation or a multi-page file)")


@pytest.mark.timeout(60)
def test_special_files_as_inputs_get_an_accurate_error(tmp_path, capsys):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    cases = {fifo: "is a named pipe (FIFO), not an image file"}
    if os.path.exists("/dev/zero"):
        cases["/dev/zero"] = "is a character device, not an image file"
    for path, message in cases.items():
        code = main(["upscale", str(path), "-o", str(tmp_path / "out.png"), *NO_MODEL, "--weights", "x"])
        one_line_error(capsys, code, f"{str(path)!r} {message}")
