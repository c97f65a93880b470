"""Input listing on hostile file systems: symbolic-link loops, links to themselves, dangling links,
unreadable folders and files, names that are not UTF-8, entries that vanish between listing and
reading. Each is skipped or fails with its reason; the listing never aborts. The entries are made
at test time."""

from __future__ import annotations

import json
import os
import textwrap

import numpy as np
import pytest
import torch
from unreadable import run_python_without_override

from pisa_core.errors import PiSAError
from pisa_core.files.images import (
    check_output_folder,
    list_inputs_and_skipped,
    probe_image,
    read_image,
    read_png_settings,
    write_image,
)
from pisa_core.files.images.listing import skip_reason

IMAGE = torch.from_numpy(np.random.default_rng(3).random((4, 5, 3), dtype=np.float32))


@pytest.fixture
def folder(tmp_path):
    """A folder with one good image and links that go nowhere: to themselves, in a loop, dangling."""
    root = tmp_path / "in"
    write_image(root / "good.png", IMAGE)
    os.symlink("self.png", root / "self.png")
    os.symlink("b.png", root / "a.png")
    os.symlink("a.png", root / "b.png")
    os.symlink("missing.png", root / "gone.png")
    os.symlink("..", root / "up")  # a folder loop for recursive patterns
    return root


def test_links_that_go_nowhere_are_skipped_with_their_reason(folder):
    found, skipped = list_inputs_and_skipped([folder])
    assert found == [folder / "good.png"]
    assert dict(skipped) == {folder / "a.png": "a symbolic link loop, not an image file",
                             folder / "b.png": "a symbolic link loop, not an image file",
                             folder / "gone.png": "a broken symbolic link, not an image file",
                             folder / "self.png": "a symbolic link loop, not an image file"}


def test_a_link_to_itself_given_by_name_fails_alone(folder):
    found, _ = list_inputs_and_skipped([folder / "self.png", folder / "good.png"])
    assert found == [folder / "self.png", folder / "good.png"]
    for reader in (probe_image, read_image):
        with pytest.raises(PiSAError, match="self.png' is a symbolic link loop, not an image file"):
            reader(folder / "self.png")


def test_a_recursive_pattern_through_a_folder_loop_ends_and_lists_each_file_once(folder):
    found, _ = list_inputs_and_skipped([str(folder / "**" / "*.png")])
    assert found == [folder / "good.png"]


def test_names_that_are_not_utf8(tmp_path):
    folder = tmp_path / "in"
    name = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: not UTF-8, kept as surrogates
    write_image(folder / name, IMAGE)
    (folder / os.fsdecode(b"bad\xff.png")).write_bytes(b"not an image")
    found, _ = list_inputs_and_skipped([folder])
    assert [p.name for p in found] == [os.fsdecode(b"bad\xff.png"), name]
    image, _ = read_image(folder / name)
    settings = {"input": name}  # the settings a PNG output records name its input
    write_image(tmp_path / "out" / name, image, text={"pisa-sr": json.dumps(settings, ensure_ascii=False)})
    assert read_image(tmp_path / "out" / name)[0].shape == (4, 5, 3)
    assert read_png_settings(tmp_path / "out" / name) == settings
    with pytest.raises(PiSAError) as error:
        read_image(found[0])
    assert "\\udcff" in str(error.value)  # escaped: the line prints in any encoding
    str(error.value).encode("ascii")


def test_an_entry_removed_between_listing_and_reading(folder):
    found, _ = list_inputs_and_skipped([folder])
    found[0].unlink()
    for reader in (probe_image, read_image):
        with pytest.raises(PiSAError, match="good.png' does not exist"):
            reader(found[0])
    assert skip_reason(folder / "vanished.gif") == "removed while the folder was listed"


def test_output_folder_behind_a_link_loop_or_a_file(folder, tmp_path):
    with pytest.raises(PiSAError, match="Cannot write to the output folder"):
        check_output_folder(folder / "self.png" / "out")
    with pytest.raises(PiSAError, match="is a file, not a folder"):
        check_output_folder(folder / "good.png")


def test_unreadable_folders_and_files(tmp_path):
    """Run where permission bits apply (as root: without the capabilities that bypass them)."""
    locked, open_folder = tmp_path / "locked", tmp_path / "open"
    write_image(locked / "hidden.png", IMAGE)
    write_image(open_folder / "good.png", IMAGE)
    write_image(open_folder / "secret.png", IMAGE)
    locked.chmod(0o000)
    (open_folder / "secret.png").chmod(0o000)
    code = textwrap.dedent(f"""
        import json
        from pisa_core.errors import PiSAError
        from pisa_core.files.images import folder_images, list_inputs_and_skipped, probe_image, read_image
        found, skipped = list_inputs_and_skipped([{str(locked)!r}, {str(open_folder)!r}])
        result = {{"found": [str(p) for p in found], "skipped": [[str(p), r] for p, r in skipped]}}
        for name, call in (("read", read_image), ("probe", probe_image), ("folder", folder_images)):
            try:
                call({str(open_folder / "secret.png")!r} if name != "folder" else {str(locked)!r})
            except PiSAError as error:
                result[name] = str(error)
        print(json.dumps(result))
    """)
    try:
        done = run_python_without_override(code)
    finally:
        locked.chmod(0o755)
    if done is None:
        pytest.skip("this machine cannot make a file unreadable for root (no setpriv)")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["found"] == [str(open_folder / "good.png"), str(open_folder / "secret.png")]
    assert result["skipped"] == [[str(locked), "a folder that cannot be listed (Permission denied)"]]
    assert result["read"] == result["probe"] == f"Cannot read {str(open_folder / 'secret.png')!r}: Permission denied."
    assert result["folder"] == f"Cannot list the folder {str(locked)!r}: Permission denied."


def test_a_folder_run_writes_the_good_image_beside_hostile_entries(model_dir, folder, tmp_path, capsys):
    """The issue's case: links to themselves, in a loop, dangling, a non-UTF-8 name and a damaged
    TIFF beside a good image; the good image (and the other readable one) is written, each other
    entry is named with its reason, nothing aborts."""
    from test_cli import model_args
    from tiff_files import retag, tiff16

    from pisa_core.cli.main import main

    (folder / "damaged.tif").write_bytes(retag(tiff16(), 273, 5))
    write_image(folder / os.fsdecode(b"caf\xe9.png"), IMAGE)
    out = tmp_path / "out"
    code = main(["upscale", str(folder), "-o", str(out), *model_args(model_dir), "--upscale", "2"])
    captured = capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == sorted([os.fsdecode(b"caf\xe9.png"), "good.png"])
    assert code == 2 and "damaged.tif" in captured.out + captured.err
    for name in ("self.png (a symbolic link loop", "gone.png (a broken symbolic link"):
        assert name in captured.out
