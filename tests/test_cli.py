"""`pisa-sr` end to end on tiny models: files, folders, globs, 16-bit output, errors, convert, info."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from launcher import accelerate_two_processes, run_launched
from PIL import Image

from pisa_core.cli.main import main
from pisa_core.files.images import read_image


@pytest.fixture()
def photos(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    g = np.random.default_rng(0)
    for i, (w, h) in enumerate(((12, 10), (9, 14))):
        coarse = (g.random((4, 4, 3)) * 255).astype(np.uint8)
        Image.fromarray(coarse).resize((w, h), Image.BILINEAR).save(folder / f"photo{i}.png")
    return folder


def model_args(model_dir, *extra, device="cpu"):
    device_args = ["--device", device] if device else []
    return ["--base", str(model_dir / "sd21-tiny.safetensors"), "--weights", str(model_dir / "pisa_sr.pkl"),
            "--process-size", "0", *device_args, *extra]


def test_upscale_a_folder_writes_exact_sizes(model_dir, photos, tmp_path):
    out = tmp_path / "out"
    assert main(["upscale", str(photos), "-o", str(out), *model_args(model_dir)]) == 0
    for name, (w, h) in (("photo0.png", (12, 10)), ("photo1.png", (9, 14))):
        image, info = read_image(out / name)
        assert image.shape == (4 * h, 4 * w, 3) and info.bit_depth == 8


def test_glob_single_file_name_and_16_bit_output(model_dir, photos, tmp_path):
    target = tmp_path / "single.png"
    code = main(["upscale", str(photos / "photo0*"), "-o", str(target), "--bit-depth", "16",
                 "--lambda-pix", "0.8", "--lambda-sem", "1.2", "--color-fix", "wavelet", *model_args(model_dir)])
    assert code == 0
    image, info = read_image(target)
    assert info.bit_depth == 16 and image.shape == (40, 48, 3)


def test_release_geometry_from_the_cli(model_dir, photos, tmp_path):
    out = tmp_path / "rel"
    code = main(["upscale", str(photos / "photo0.png"), "-o", str(out), "--geometry", "release",
                 "--upscale", "2", *model_args(model_dir)])
    assert code == 0
    assert read_image(out / "photo0.png")[0].shape == (16, 24, 3)  # release: floor to multiples of 8


@pytest.mark.parametrize("extra, message", [
    (["--latent-tile", "8", "--latent-overlap", "8"], "overlap"),
    (["--base", "/nonexistent/model.safetensors"], "model.safetensors"),
])
def test_errors_are_one_line_with_exit_code_2(model_dir, photos, tmp_path, capsys, extra, message):
    code = main(["upscale", str(photos), "-o", str(tmp_path / "o"), *model_args(model_dir), *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1


def test_missing_input_is_an_error(model_dir, tmp_path, capsys):
    assert main(["upscale", str(tmp_path / "nothing*.png"), "-o", str(tmp_path), *model_args(model_dir)]) == 2
    assert "nothing" in capsys.readouterr().err


def test_convert_and_info(model_dir, tmp_path, capsys):
    target = tmp_path / "w.safetensors"
    assert main(["convert", str(model_dir / "pisa_sr.pkl"), str(target)]) == 0
    capsys.readouterr()
    assert main(["info", str(target), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "pisa-safetensors"
    assert main(["info", str(model_dir / "sd21-tiny.safetensors")]) == 2


def test_accelerate_launch_splits_files_between_processes(model_dir, photos, tmp_path):
    out = tmp_path / "dist"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [*accelerate_two_processes(), "-m", "pisa_core", "upscale", str(photos), "-o", str(out), *model_args(model_dir, device=None)]
    result = run_launched(cmd, env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["photo0.png", "photo1.png"]
    handled = [line for line in result.stdout.splitlines() if line.startswith("pisa-sr: process ")]
    assert sorted(handled) == ["pisa-sr: process 0: photo0.png", "pisa-sr: process 1: photo1.png"]
