"""`pisa-sr` never loses a file: inputs are never written over, existing outputs are kept unless
--overwrite, name collisions and unwritable destinations are refused before any work, and a failed
write leaves nothing behind. Upscale, convert, degrade and train."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
from PIL import Image
from readonly import run_python_with_read_only
from test_cli import model_args, photos  # noqa: F401 (photos is a fixture)

from pisa_core.cli.main import main
from pisa_core.cli.train import degrade_main
from pisa_core.files.images import read_image

# Any run that got as far as loading the model would fail on this file instead.
NO_MODEL = ("--base", "/nonexistent/model.safetensors")


def one_line_error(capsys, code, *fragments):
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ----------------------------------------------------------------------------- inputs are never written over


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_output_naming_an_input_file_is_refused(model_dir, photos, capsys, overwrite):  # noqa: F811
    before = snapshot(photos)
    source = str(photos / "photo0.png")
    code = main(["upscale", source, "-o", source, *model_args(model_dir), *overwrite])
    one_line_error(capsys, code, "photo0.png", "input")
    assert snapshot(photos) == before


def test_output_folder_that_is_the_input_folder_is_refused(model_dir, photos, capsys):  # noqa: F811
    before = snapshot(photos)
    code = main(["upscale", str(photos), "-o", str(photos), *model_args(model_dir), "--overwrite"])
    one_line_error(capsys, code, "is an input file")
    assert snapshot(photos) == before


def test_same_stem_inputs_collide_before_any_work(model_dir, photos, tmp_path, capsys):  # noqa: F811
    Image.open(photos / "photo0.png").convert("RGB").save(photos / "photo0.jpg")
    out = tmp_path / "out"
    code = main(["upscale", str(photos), "-o", str(out), *model_args(model_dir), *NO_MODEL])
    one_line_error(capsys, code, "photo0.jpg", "photo0.png", "both be written")
    assert not out.exists()


def test_file_output_with_several_inputs_is_refused(model_dir, photos, tmp_path, capsys):  # noqa: F811
    code = main(["upscale", str(photos), "-o", str(tmp_path / "one.png"), *model_args(model_dir), *NO_MODEL])
    one_line_error(capsys, code, "one.png", "2 inputs")


# ----------------------------------------------------------------------------- existing outputs


def test_existing_outputs_are_skipped_and_overwrite_replaces_them(model_dir, photos, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out"
    run = ["upscale", str(photos), "-o", str(out), *model_args(model_dir)]
    assert main(run) == 0
    (out / "photo0.png").write_bytes(b"kept")
    (out / "photo1.png").unlink()
    capsys.readouterr()
    assert main(run) == 0
    captured = capsys.readouterr()
    assert (out / "photo0.png").read_bytes() == b"kept"
    assert read_image(out / "photo1.png")[0].shape == (56, 36, 3)
    assert f"skipping {out / 'photo0.png'}" in captured.err
    assert "1 image written" in captured.out and "1 skipped" in captured.out
    assert main([*run, "--overwrite"]) == 0
    assert read_image(out / "photo0.png")[0].shape == (40, 48, 3)
    assert sorted(p.name for p in out.iterdir()) == ["photo0.png", "photo1.png"]  # no temporary files


def test_nothing_to_do_loads_no_model(model_dir, photos, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out"
    out.mkdir()
    for name in ("photo0.png", "photo1.png"):
        (out / name).write_bytes(b"x")
    assert main(["upscale", str(photos), "-o", str(out), *model_args(model_dir), *NO_MODEL]) == 0
    assert capsys.readouterr().out.strip() == "pisa-sr: 0 images written; 2 skipped (output exists; --overwrite replaces it)"


def test_a_single_existing_output_is_an_error(model_dir, photos, tmp_path, capsys):  # noqa: F811
    target = tmp_path / "x.png"
    target.write_bytes(b"mine")
    code = main(["upscale", str(photos / "photo0.png"), "-o", str(target), *model_args(model_dir), *NO_MODEL])
    one_line_error(capsys, code, "x.png", "--overwrite")
    assert target.read_bytes() == b"mine"


# ----------------------------------------------------------------------------- unwritable destinations


def test_output_under_a_regular_file_fails_before_loading(model_dir, photos, tmp_path, capsys):  # noqa: F811
    blocker = tmp_path / "notes.txt"
    blocker.write_text("x")
    code = main(["upscale", str(photos), "-o", str(blocker / "out"), *model_args(model_dir), *NO_MODEL])
    one_line_error(capsys, code, "notes.txt")


def test_read_only_output_folder_fails_before_loading(model_dir, photos, tmp_path):  # noqa: F811
    out = tmp_path / "ro"
    argv = ["upscale", str(photos), "-o", str(out), *model_args(model_dir), *NO_MODEL]
    done = run_python_with_read_only(out, f"import sys; from pisa_core.cli.main import main; sys.exit(main({argv!r}))")
    if done is None:
        pytest.skip("this machine can make no folder read-only for root (no unshare -m)")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(out) in lines[0] and "model.safetensors" not in lines[0], lines


def test_a_full_disk_stops_the_run_and_leaves_no_partial_file(model_dir, photos, tmp_path, capsys, monkeypatch):  # noqa: F811
    """The disk fills while the first image is written (Pillow's encoder raises ENOSPC after
    writing part of it): one line, exit code 2, and no file at all in the output folder."""
    def full_disk(self, fp, format=None, **params):
        fp.write(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Image.Image, "save", full_disk)
    out = tmp_path / "out"
    code = main(["upscale", str(photos), "-o", str(out), *model_args(model_dir)])
    captured = capsys.readouterr()
    assert code == 2 and "No space left on device" in captured.err and "photo0.png" in captured.err
    assert "0 images written" in captured.out
    assert list(out.iterdir()) == []


# ----------------------------------------------------------------------------- convert, degrade, train


def test_convert_keeps_an_existing_destination(model_dir, tmp_path, capsys):
    target = tmp_path / "w.safetensors"
    target.write_bytes(b"mine")
    code = main(["convert", str(model_dir / "pisa_sr.pkl"), str(target)])
    one_line_error(capsys, code, "w.safetensors", "--overwrite")
    assert target.read_bytes() == b"mine"
    assert main(["convert", str(model_dir / "pisa_sr.pkl"), str(target), "--overwrite"]) == 0
    assert target.stat().st_size > 1000 and sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]


def _hq_folder(folder):
    folder.mkdir()
    g = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray((g.random((20, 24, 3)) * 255).astype(np.uint8)).save(folder / name)
    return folder


def test_degrade_keeps_existing_outputs_and_never_writes_over_an_input(tmp_path, capsys):
    src = _hq_folder(tmp_path / "hq")
    out = tmp_path / "lq"
    assert degrade_main([str(src), "-o", str(out)]) == 0
    first = snapshot(out)
    (out / "a.png").write_bytes(b"kept")
    (out / "b.png").unlink()
    capsys.readouterr()
    assert degrade_main([str(src), "-o", str(out)]) == 0
    assert (out / "a.png").read_bytes() == b"kept"
    assert (out / "b.png").read_bytes() == first["b.png"]  # image 1 keeps its random stream (seed, 1)
    assert "1 skipped" in capsys.readouterr().out
    assert degrade_main([str(src), "-o", str(out), "--overwrite"]) == 0
    assert snapshot(out) == first
    before = snapshot(src)
    one_line_error(capsys, degrade_main([str(src), "-o", str(src), "--overwrite"]), "input")
    Image.open(src / "a.png").save(src / "a.bmp")
    one_line_error(capsys, degrade_main([str(src), "-o", str(tmp_path / "new")]), "both be written")
    assert not (tmp_path / "new").exists()
    (src / "a.bmp").unlink()
    assert snapshot(src) == before


def test_degrade_goes_on_past_an_unreadable_image(tmp_path, capsys):
    src = _hq_folder(tmp_path / "hq")
    (src / "0bad.png").write_text("not an image")
    out = tmp_path / "lq"
    assert degrade_main([str(src), "-o", str(out)]) == 2
    captured = capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    assert "1 failed" in captured.out and "0bad.png" in captured.err


def test_train_never_trains_over_a_previous_run(model_dir, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints" / "state_step000002").mkdir(parents=True)
    data = _hq_folder(tmp_path / "hq")
    command = ["train", "--stage", "pix", "--base", NO_MODEL[1], "--data", str(data), "--output-dir", str(run)]
    one_line_error(capsys, main(command), "already holds a training run", "--resume")
    # with --resume the folder is accepted, and the run only then fails on the (missing) model
    one_line_error(capsys, main([*command, "--resume", "latest"]), "model.safetensors")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    one_line_error(capsys, main([*command[:-1], str(blocker / "run")]), "--output-dir")
