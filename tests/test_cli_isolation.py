"""One input's failure is that input's alone: a folder holding a good image beside broken files of
several kinds writes the good image, names each broken file on a line of its own and exits with 2;
an unexpected exception (injected into our readers) is reported as an internal error with the way
to its traceback, and the other inputs still run."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest
from icc_profiles import rgb_profile
from PIL import Image
from test_cli import model_args

from pisa_core.cli.main import main
from pisa_core.files import images as image_io


def _png(pixels: np.ndarray, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", **options)
    return buffer.getvalue()


def _pixels(seed: int = 0, h: int = 10, w: int = 12) -> np.ndarray:
    return (np.random.default_rng(seed).random((h, w, 3)) * 255).astype(np.uint8)


def _damaged_tiff() -> bytes:
    """A TIFF whose header points its first IFD far beyond the file."""
    buffer = io.BytesIO()
    Image.fromarray(_pixels(3)).save(buffer, "TIFF")
    data = bytearray(buffer.getvalue())
    data[4:8] = struct.pack("<I", 10**9)
    return bytes(data)


def _damaged_icc_png() -> bytes:
    """A PNG whose embedded ICC profile has a tone curve of a type that does not exist."""
    profile = bytearray(rgb_profile())
    count = struct.unpack(">I", profile[128:132])[0]
    for index in range(count):
        signature, offset, _ = struct.unpack(">4sII", profile[132 + 12 * index:144 + 12 * index])
        if signature == b"rTRC":
            profile[offset:offset + 4] = b"XXXX"
    return _png(_pixels(4), icc_profile=bytes(profile))


BROKEN = {
    "truncated.png": lambda: _png(_pixels(1))[:120],
    "header.tif": _damaged_tiff,
    "noise.png": lambda: np.random.default_rng(5).bytes(700),
}
# An unreadable embedded profile is ignored with a line naming the file (docs/images.md): the image is
# read as sRGB, so it is written; it must not take the others down either.
IGNORED_PROFILE = "profile.png"


@pytest.fixture()
def mixed_folder(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.png").write_bytes(_png(_pixels()))
    for name, make in BROKEN.items():
        (folder / name).write_bytes(make())
    (folder / IGNORED_PROFILE).write_bytes(_damaged_icc_png())
    return folder


def _failed_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("pisa-sr: error:")]


def test_broken_files_beside_a_good_image_fail_alone(model_dir, mixed_folder, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["upscale", str(mixed_folder), "-o", str(out), *model_args(model_dir)])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert sorted(p.name for p in out.iterdir()) == ["good.png", IGNORED_PROFILE]
    lines = _failed_lines(captured.err)
    for name in BROKEN:
        assert sum(name in line for line in lines) == 1, captured.err
    assert f"{len(BROKEN)} failed" in captured.out
    assert any(IGNORED_PROFILE in line and "ICC profile" in line for line in captured.err.splitlines())


def test_several_broken_files_and_no_good_one_exit_2_without_writing(model_dir, mixed_folder, tmp_path, capsys):
    (mixed_folder / "good.png").unlink()
    (mixed_folder / IGNORED_PROFILE).unlink()
    out = tmp_path / "out"
    code = main(["upscale", str(mixed_folder), "-o", str(out), *model_args(model_dir)])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert not out.exists() or not any(out.iterdir())
    assert len(_failed_lines(captured.err)) == len(BROKEN)


def _raise_for(name: str, original, error: Exception):
    def wrapped(path, *args, **kwargs):
        if str(path).endswith(name):
            raise error
        return original(path, *args, **kwargs)
    return wrapped


@pytest.mark.parametrize("reader", ["probe_image", "read_image"])
def test_an_internal_error_is_named_as_one_and_the_others_go_on(model_dir, tmp_path, capsys, monkeypatch, reader):
    folder = tmp_path / "in"
    folder.mkdir()
    for seed, name in enumerate(("a.png", "bug.png", "c.png")):
        (folder / name).write_bytes(_png(_pixels(seed)))
    monkeypatch.setattr(image_io, reader, _raise_for("bug.png", getattr(image_io, reader), TypeError("boom")))
    out = tmp_path / "out"
    code = main(["upscale", str(folder), "-o", str(out), *model_args(model_dir)])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "c.png"]
    [line] = _failed_lines(captured.err)
    assert "bug.png" in line and "internal error (TypeError: boom)" in line and "--debug" in line
    assert "Traceback" not in captured.err


def test_debug_logs_the_traceback_of_an_internal_error(model_dir, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    for seed, name in enumerate(("a.png", "bug.png")):
        (folder / name).write_bytes(_png(_pixels(seed)))
    monkeypatch.setattr(image_io, "read_image", _raise_for("bug.png", image_io.read_image, KeyError("lost")))
    out = tmp_path / "out"
    code = main(["upscale", str(folder), "-o", str(out), "--debug", *model_args(model_dir)])
    captured = capsys.readouterr()
    assert code == 2 and (out / "a.png").is_file()
    assert "Traceback (most recent call last)" in captured.err and "KeyError: 'lost'" in captured.err
    assert any("internal error (KeyError" in line and "traceback is above" in line
               for line in _failed_lines(captured.err))


def test_an_input_argument_that_cannot_be_listed_fails_alone(model_dir, tmp_path, capsys, monkeypatch):
    good = tmp_path / "good.png"
    good.write_bytes(_png(_pixels()))
    missing = tmp_path / "missing.png"
    broken = tmp_path / "loop"
    broken.mkdir()
    listing = image_io.list_inputs_and_skipped

    def failing_listing(patterns):
        if any(str(pattern).endswith("loop") for pattern in patterns):
            raise RuntimeError("Symlink loop")
        return listing(patterns)

    monkeypatch.setattr(image_io, "list_inputs_and_skipped", failing_listing)
    out = tmp_path / "out"
    code = main(["upscale", str(good), str(missing), str(broken), "-o", str(out), *model_args(model_dir)])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert sorted(p.name for p in out.iterdir()) == ["good.png"]
    lines = _failed_lines(captured.err)
    assert len(lines) == 2
    assert any("missing.png" in line and "does not exist" in line for line in lines)
    assert any("loop" in line and "internal error (RuntimeError: Symlink loop)" in line for line in lines)


def test_a_write_failing_for_one_image_leaves_no_partial_file(model_dir, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "in"
    folder.mkdir()
    for seed, name in enumerate(("a.png", "b.png")):
        (folder / name).write_bytes(_png(_pixels(seed)))
    save = Image.Image.save

    def failing_save(self, fp, *args, **kwargs):
        if Path(str(getattr(fp, "name", fp))).name.startswith((".b.png", "b.png")):
            fp.write(b"\x89PNG half an image")
            raise ValueError("encoder broke")
        return save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", failing_save)
    out = tmp_path / "out"
    code = main(["upscale", str(folder), "-o", str(out), *model_args(model_dir)])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert sorted(p.name for p in out.iterdir()) == ["a.png"]  # no b.png, no temporary file
    [line] = _failed_lines(captured.err)
    assert "b.png" in line and "internal error (ValueError: encoder broke)" in line
