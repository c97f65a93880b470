"""`pisa-sr upscale --mask`: region-aware guidance from a mask file or a folder of masks matched by
stem, checked before the model loads; and the settings every PNG output carries, printed by
`pisa-sr info`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from test_cli import model_args, photos  # noqa: F401 (photos is a fixture)
from test_cli_outputs import NO_MODEL, one_line_error

import pisa_core
from pisa_core import options
from pisa_core.cli.main import main
from pisa_core.files.images import png_text, read_image, write_image

PLAIN = ("--lambda-sem", "1.3")  # outside the mask (λ_pix 1 everywhere)
INSIDE = ("--lambda-sem", "0.3")  # what the mask's inside gets: --lambda-sem-masked 0.3, the default
SIZES = {"photo0": (12, 10), "photo1": (9, 14)}  # (w, h)


def make_photos(folder):
    folder.mkdir()
    g = np.random.default_rng(0)
    for stem, (w, h) in SIZES.items():
        coarse = (g.random((4, 4, 3)) * 255).astype(np.uint8)
        Image.fromarray(coarse).resize((w, h), Image.BILINEAR).save(folder / f"{stem}.png")
    return folder


def save_mask(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)
    return path


def left_half(w, h):
    """A white left half on black, [h, w] levels."""
    levels = np.zeros((h, w), np.uint8)
    levels[:, : w // 2] = 255
    return levels


def upscale(model_dir, inputs, out, *extra):
    code = main(["upscale", str(inputs), "-o", str(out), *model_args(model_dir), "--dtype", "fp32", *extra])
    assert code == 0
    return out


def pixels(path):
    return read_image(path)[0]


@pytest.fixture(scope="module")
def runs(model_dir, tmp_path_factory):
    """Both photos with the plain λ and with the masked λ everywhere, no mask."""
    root = tmp_path_factory.mktemp("regions")
    folder = make_photos(root / "in")
    return {"in": folder, "plain": upscale(model_dir, folder, root / "plain", *PLAIN),
            "inside": upscale(model_dir, folder, root / "inside", *INSIDE)}


def test_white_and_black_masks_equal_the_runs_with_the_masked_and_the_plain_lambda(model_dir, runs, tmp_path):
    photo = runs["in"] / "photo0.png"
    white = save_mask(tmp_path / "white.png", np.full((20, 24), 255))  # twice the input's size
    black = save_mask(tmp_path / "black.png", np.zeros((5, 6)))  # half of it
    out = upscale(model_dir, photo, tmp_path / "w.png", *PLAIN, "--mask", str(white))
    assert torch.equal(pixels(out), pixels(runs["inside"] / "photo0.png"))
    out = upscale(model_dir, photo, tmp_path / "b.png", *PLAIN, "--mask", str(black))
    assert torch.equal(pixels(out), pixels(runs["plain"] / "photo0.png"))


def test_a_mask_of_another_size_and_the_same_mask_as_alpha(model_dir, runs, tmp_path):
    photo = runs["in"] / "photo0.png"
    half = save_mask(tmp_path / "half.png", left_half(36, 30))  # three times the input's size
    mixed = pixels(upscale(model_dir, photo, tmp_path / "h.png", *PLAIN, "--mask", str(half)))
    inside, plain = pixels(runs["inside"] / "photo0.png"), pixels(runs["plain"] / "photo0.png")
    left, right = slice(0, 16), slice(-16, None)  # of 48 output columns; the mask's edge is at 24
    assert (mixed[:, left] - inside[:, left]).abs().mean() < (mixed[:, left] - plain[:, left]).abs().mean()
    assert (mixed[:, right] - plain[:, right]).abs().mean() < (mixed[:, right] - inside[:, right]).abs().mean()
    cutout = np.full((30, 36, 4), 255, np.uint8)  # white everywhere: only the alpha marks the region
    cutout[..., 3] = left_half(36, 30)
    alpha = save_mask(tmp_path / "cutout.png", cutout)
    assert torch.equal(pixels(upscale(model_dir, photo, tmp_path / "a.png", *PLAIN, "--mask", str(alpha))), mixed)


def test_a_folder_of_inputs_takes_masks_of_the_same_stem(model_dir, runs, tmp_path, capsys):
    masks = tmp_path / "masks"
    save_mask(masks / "photo0.png", np.full((30, 36), 255))
    save_mask(masks / "unrelated.png", np.zeros((4, 4)))
    capsys.readouterr()
    out = upscale(model_dir, runs["in"], tmp_path / "out", *PLAIN, "--mask", str(masks))
    err = capsys.readouterr().err
    assert torch.equal(pixels(out / "photo0.png"), pixels(runs["inside"] / "photo0.png"))
    assert torch.equal(pixels(out / "photo1.png"), pixels(runs["plain"] / "photo1.png"))  # no mask of its stem
    notes = [line for line in err.splitlines() if "note" in line]
    assert len(notes) == 1 and "photo1.png" in notes[0] and "without" in notes[0], err
    with_mask, without = (json.loads(png_text(out / f"photo{i}.png")["pisa-sr"]) for i in (0, 1))
    assert with_mask["mask"] == "photo0.png" and with_mask["lambda_sem_masked"] == 0.3
    assert without["mask"] is None and "lambda_sem_masked" not in without


def _truncated(tmp_path):
    good = save_mask(tmp_path / "good.png", np.random.default_rng(0).integers(0, 256, (120, 144)))
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:300])  # the header reads, the pixels do not
    return ["--mask", str(cut)], ["--mask", "cut.png"]


def _unreadable(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    return ["--mask", str(tmp_path / "notes.png")], ["--mask", "notes.png"]


def _no_match(tmp_path):
    save_mask(tmp_path / "masks" / "other.png", np.zeros((4, 4)))
    return ["--mask", str(tmp_path / "masks")], ["masks", "no mask for any input", "photo0.png"]


def _two_of_a_stem(tmp_path):
    save_mask(tmp_path / "masks" / "photo0.png", np.zeros((10, 12)))
    save_mask(tmp_path / "masks" / "photo0.jpg", np.zeros((10, 12)))
    return ["--mask", str(tmp_path / "masks")], ["2 masks for photo0.png", "photo0.jpg"]


def _other_shape(tmp_path):
    save_mask(tmp_path / "square.png", np.zeros((10, 10)))
    return ["--mask", str(tmp_path / "square.png")], ["square.png", "10x10", "photo0.png", "12x10", "aspect"]


@pytest.mark.parametrize("case", [
    lambda tmp: (["--mask", str(tmp / "nothing.png")], ["nothing.png", "does not exist"]),
    _unreadable,
    _truncated,
    _no_match,
    _two_of_a_stem,
    _other_shape,
    lambda tmp: (["--lambda-sem-masked", "0.5"], ["--lambda-sem-masked", "--mask"]),
    lambda tmp: (["--mask", str(save_mask(tmp / "m.png", np.zeros((5, 6)))), "--lambda-pix-masked", "nan"],
                 ["--lambda-pix-masked"]),
], ids=["missing", "unreadable", "truncated", "no-match", "two-of-a-stem", "other-shape", "flag-without-mask",
        "nan"])
def test_mask_errors_are_one_line_before_the_model_loads(model_dir, photos, tmp_path, capsys, case):  # noqa: F811
    extra, fragments = case(tmp_path)
    out = tmp_path / "out"
    code = main(["upscale", str(photos), "-o", str(out), *model_args(model_dir), *extra, *NO_MODEL])
    one_line_error(capsys, code, *fragments)
    assert not out.exists()


def test_masks_are_never_inputs_or_outputs(model_dir, photos, tmp_path, capsys):  # noqa: F811
    inside = save_mask(photos / "face.png", np.zeros((10, 12)))  # a mask left in the input folder
    code = main(["upscale", str(photos), "-o", str(tmp_path / "out"), "--mask", str(inside), *model_args(model_dir),
                 *NO_MODEL])
    one_line_error(capsys, code, "face.png", "also an input")
    inside.unlink()
    masks = tmp_path / "masks"
    mask = save_mask(masks / "photo0.png", np.zeros((10, 12)))
    before = mask.read_bytes()
    code = main(["upscale", str(photos / "photo0.png"), "-o", str(masks), "--mask", str(masks), "--overwrite",
                 *model_args(model_dir), *NO_MODEL])
    one_line_error(capsys, code, "photo0.png", "is a mask file")
    assert mask.read_bytes() == before


def test_the_settings_of_8_and_16_bit_png_outputs_round_trip_through_info(model_dir, runs, tmp_path, capsys):
    plain = runs["plain"] / "photo0.png"
    capsys.readouterr()
    assert main(["info", str(plain), "--json"]) == 0
    settings = json.loads(capsys.readouterr().out)
    base, weights = model_dir / "sd21-tiny.safetensors", model_dir / "pisa_sr.pkl"
    expected = {name: options.default(name) for name in options.CALL_OPTIONS}
    expected.update(lambda_sem=1.3, process_size=0, version=pisa_core.__version__, dtype="fp32", device="cpu",
                    base={"file": base.name, "bytes": base.stat().st_size},
                    weights={"file": weights.name, "bytes": weights.stat().st_size},
                    input="photo0.png", input_size=[12, 10], output_size=[48, 40], bit_depth=8, mask=None)
    assert {key: settings[key] for key in expected} == expected
    assert settings["torch"] == torch.__version__
    half = save_mask(tmp_path / "half.png", left_half(12, 10))
    deep = upscale(model_dir, runs["in"] / "photo0.png", tmp_path / "deep.png", *PLAIN, "--mask", str(half),
                   "--bit-depth", "16", "--sample", "--seed", "7", "--latent-tile", "16", "--latent-overlap", "8")
    assert read_image(deep)[1].bit_depth == 16
    capsys.readouterr()
    assert main(["info", str(deep)]) == 0
    lines = capsys.readouterr().out.splitlines()
    for line in (f"image: {deep}", "input: photo0.png", "input_size: 12x10", "output_size: 48x40", "bit_depth: 16",
                 "mask: half.png", "lambda_pix_masked: 1.0", "lambda_sem_masked: 0.3", "lambda_sem: 1.3",
                 f"base: {base.name} ({base.stat().st_size:,} bytes)", "sample: true", "seed: 7",
                 "latent_tile: 16", "latent_overlap: 8", f"version: {pisa_core.__version__}"):
        assert line in lines, lines
    bare = tmp_path / "bare.png"
    write_image(bare, torch.rand(4, 4, 3))
    one_line_error(capsys, main(["info", str(bare)]), "bare.png", "without pisa-sr settings")
