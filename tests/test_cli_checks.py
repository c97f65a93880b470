"""`pisa-sr upscale` refuses bad options, devices, sizes and inputs in one line before the model
loads, goes on past an unreadable input, keeps thin images cheap, logs a line per image without
third-party progress bars, and ends with the summary line benchmarks parse."""

from __future__ import annotations

import logging
import re
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image
from test_cli import model_args, photos  # noqa: F401 (photos is a fixture)
from test_cli_outputs import NO_MODEL, one_line_error

from pisa_core import options
from pisa_core.cli.main import LONG_IMAGE_S, _StageLog, main
from pisa_core.files.images import read_image, write_image
from pisa_core.inference.progress import Heartbeat

# benchmarks/cpu_speed.py parses this; README "Command line" documents it.
SUMMARY = re.compile(r"^pisa-sr: (\d+) images? written, ([\d.]+) s per image, model loaded in ([\d.]+) s "
                     r"\((fp32|fp16|bf16) on ([\w:]+)\)$")


def _no_device(name):
    if name.startswith("cuda"):
        return not torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None)
    return not (mps is not None and mps.is_available())


@pytest.mark.parametrize("extra, fragments", [
    (["--device", "cuda"], ["cuda", "no CUDA"]),
    (["--device", "mps"], ["mps", "not available"]),
    (["--device", "tpu7"], ["tpu7"]),
    (["--upscale", "inf"], ["--upscale", "inf"]),
    (["--upscale", "nan"], ["--upscale"]),
    (["--upscale", "0"], ["--upscale"]),
    (["--upscale", "-2"], ["--upscale"]),
    (["--upscale", "3000"], ["photo0.png", "36000x30000", "MP limit", "--upscale"]),
    (["--geometry", "release", "--upscale", "2.5"], ["--geometry release", "2.5"]),
    (["--lambda-pix", "nan"], ["--lambda-pix"]),
    (["--lambda-sem", "inf"], ["--lambda-sem"]),
    (["--lambda-sem", "1e30"], ["--lambda-sem must be between -10 and 10", "1e+30"]),
    (["--lambda-pix", "-10.5"], ["--lambda-pix must be between -10 and 10", "-10.5"]),
    (["--mask", "photo", "--lambda-sem-masked", "11"], ["--lambda-sem-masked must be between -10 and 10"]),
    (["--process-size", "-5"], ["--process-size", "-5"]),
    (["--process-size", "100000"], ["--process-size"]),
    (["--seed", "-1"], ["--seed"]),
    (["--vae-tile", "100"], ["vae_tile"]),
    (["--tile-batch", "0"], ["tile_batch"]),
])
def test_bad_options_fail_in_one_line_before_the_model_loads(model_dir, photos, tmp_path, capsys, extra,  # noqa: F811
                                                             fragments):
    if extra[0] == "--device" and not _no_device(extra[1]):
        pytest.skip(f"this machine has {extra[1]}")
    out = tmp_path / "out"
    code = main(["upscale", str(photos), "-o", str(out), *model_args(model_dir), *extra, *NO_MODEL])
    one_line_error(capsys, code, *fragments)
    assert not out.exists()


def test_impossible_output_formats_fail_before_the_model_loads(model_dir, photos, tmp_path, capsys):  # noqa: F811
    rgba = tmp_path / "rgba.png"
    write_image(rgba, torch.rand(6, 5, 4))
    code = main(["upscale", str(rgba), "-o", str(tmp_path / "x.jpg"), *model_args(model_dir), *NO_MODEL])
    one_line_error(capsys, code, "x.jpg", "alpha")
    code = main(["upscale", str(photos / "photo0.png"), "-o", str(tmp_path / "x.webp"), "--bit-depth", "16",
                 *model_args(model_dir), *NO_MODEL])
    one_line_error(capsys, code, "x.webp", "16 bits")


def test_an_unreadable_single_input_fails_before_the_model_loads(model_dir, tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    code = main(["upscale", str(bad), "-o", str(tmp_path / "out"), *model_args(model_dir), *NO_MODEL])
    one_line_error(capsys, code, "bad.png")


def test_a_folder_run_goes_on_past_unreadable_inputs(model_dir, photos, tmp_path, capsys):  # noqa: F811
    (photos / "0notes.png").write_text("not an image")              # fails the header check
    good = (photos / "photo0.png").read_bytes()
    (photos / "1cut.png").write_bytes(good[:len(good) // 2])          # header fine, pixels cut off
    out = tmp_path / "out"
    code = main(["upscale", str(photos), "-o", str(out), *model_args(model_dir), "--dtype", "fp32"])
    captured = capsys.readouterr()
    assert code == 2
    assert sorted(p.name for p in out.iterdir()) == ["photo0.png", "photo1.png"]
    errors = [line for line in captured.err.splitlines() if "error" in line]
    assert len(errors) == 2 and "0notes.png" in errors[0] and "1cut.png" in errors[1]
    summary = captured.out.strip()
    assert SUMMARY.match(summary.split(";")[0]), summary
    assert summary.startswith("pisa-sr: 2 images written, ")
    assert f"; 2 failed: {photos / '0notes.png'}, {photos / '1cut.png'} (first error: Cannot read " in summary
    assert summary.endswith("0notes.png': not a recognised image file (expected PNG, JPEG, WebP, TIFF or BMP).)")


@pytest.mark.timeout(300)
def test_thin_images_stay_cheap(model_dir, tmp_path, capsys):
    """The small-input rule at the default process size: a 1x500 and an 8x3000 input work at about
    MAX_WORK_AREA_FACTOR x 512² pixels (not 100+ megapixels), so they finish in seconds here."""
    folder = tmp_path / "thin"
    folder.mkdir()
    g = np.random.default_rng(1)
    for name, (h, w) in (("line.png", (1, 500)), ("strip.png", (8, 3000))):
        Image.fromarray((g.random((h, w, 3)) * 255).astype(np.uint8)).save(folder / name)
    out = tmp_path / "out"
    size = str(options.default("process_size"))
    assert main(["upscale", str(folder), "-o", str(out), *model_args(model_dir), "--process-size", size]) == 0
    assert read_image(out / "line.png")[0].shape == (4, 2000, 3)
    assert read_image(out / "strip.png")[0].shape == (32, 12000, 3)
    budget = options.MAX_WORK_AREA_FACTOR * options.default("process_size") ** 2
    worked = re.findall(r"computed at (\d+)x(\d+)", capsys.readouterr().err)
    assert len(worked) == 2
    assert all(int(w) * int(h) <= budget * 1.01 for w, h in worked)


def test_progress_logs_summary_and_no_third_party_bars(model_dir, photos, tmp_path, capfd, monkeypatch):  # noqa: F811
    # a prompt-cache miss loads the text encoder with transformers' from_pretrained (its loading bar)
    monkeypatch.setenv("PISA_SR_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out"
    assert main(["upscale", str(photos), "-o", str(out), *model_args(model_dir), "--dtype", "fp32",
                 "--base", str(model_dir / "sd21-tiny")]) == 0
    captured = capfd.readouterr()
    match = SUMMARY.match(captured.out.strip())
    assert match, captured.out
    assert match[1] == "2" and match.groups()[3:] == ("fp32", "cpu") and float(match[2]) > 0
    lines = captured.err.strip().splitlines()
    assert "pisa-sr: fp32 on cpu" in lines  # the pipeline's dtype decision (INFO)
    assert all(line.startswith("pisa-sr: ") for line in lines), lines  # one prefix, the core's lines included
    assert [line.split(" ->")[0] for line in lines if " -> " in line] == [
        "pisa-sr: [1/2] photo0.png", "pisa-sr: [2/2] photo1.png"]
    assert not any(bar in captured.err for bar in ("it/s]", "%|", "Loading")), captured.err


def test_long_images_log_each_stage(caplog):
    caplog.set_level(logging.INFO, logger="pisa_core.cli")
    progress = _StageLog("[1/1] big.png")
    for done in (50, 100, 200, 300):
        progress(done, 300)
    assert caplog.messages == []  # a short image: no stage lines
    progress.start -= LONG_IMAGE_S
    progress.stage = 0
    for done in (50, 100, 150, 300):  # stage 2 (no UNet pass) may be skipped
        progress(done, 300)
    assert [m.split(", ")[0] for m in caplog.messages] == [
        "pisa-sr: [1/1] big.png: VAE encode done (stage 1 of 3)", "pisa-sr: [1/1] big.png: VAE decode done (stage 3 of 3)"]


def test_16_bit_tiff_input_gives_16_bit_output(model_dir, tmp_path):
    levels = np.random.default_rng(2).integers(0, 65536, size=(10, 12, 3))
    source = tmp_path / "in.tif"
    write_image(source, torch.from_numpy(levels / 65535).float(), bit_depth=16)
    assert main(["upscale", str(source), "-o", str(tmp_path / "out"), *model_args(model_dir)]) == 0
    image, info = read_image(tmp_path / "out" / "in.png")
    assert (info.bit_depth, image.shape) == (16, (40, 48, 3))
    assert main(["upscale", str(source), "-o", str(tmp_path / "o.tiff"), *model_args(model_dir)]) == 0
    assert read_image(tmp_path / "o.tiff")[1].bit_depth == 16


def test_a_long_stage_gets_a_heartbeat_line_and_none_after_it_ends(caplog):
    caplog.set_level(logging.INFO, logger="pisa_core.cli")
    interval = 0.05
    with _StageLog("[1/1] huge.png", interval=interval) as progress:
        progress(150, 300)          # half way: the UNet runs, and reports nothing for a while
        time.sleep(8 * interval)
    beats = list(caplog.messages)
    assert len(beats) >= 3, beats
    assert all(re.fullmatch(r"pisa-sr: \[1/1\] huge\.png: UNet running \(stage 2 of 3\), 50 % of the image, \d+ s", m)
               for m in beats), beats
    time.sleep(4 * interval)
    assert caplog.messages == beats  # stopped with the stage: nothing printed after it


def test_heartbeat_stops_cleanly_even_mid_beat():
    beats, inside = [], threading.Event()

    def slow_beat(seconds):
        inside.set()
        time.sleep(0.1)             # the stage ends while this beat runs
        beats.append(seconds)

    with Heartbeat(0.01, slow_beat):
        assert inside.wait(5)
    count = len(beats)
    assert count >= 1               # leaving the block waited for the beat in progress
    time.sleep(0.2)
    assert len(beats) == count and all(b >= 0.01 for b in beats)
