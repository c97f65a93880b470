"""The fast decoder (VOSR's half-width SD2.1 VAE decoder): its published checkpoint layout read
safely, parity with the published structure built independently, every decode feature (exact
tiles, progress and cancel, out-of-memory back-off, dtype fallback, colour fixes, region λ, the
meta device), clear one-line errors before the base model loads, and the CLI (--decoder, settings,
info, convert)."""

from __future__ import annotations

import json
import logging
import pickle
import zipfile

import numpy as np
import pytest
import torch
from decoder_files import PublishedDecoder, published_config, published_decoder, write_published
from PIL import Image
from test_cli import model_args
from test_cli_outputs import NO_MODEL, one_line_error
from test_precision import overflowing, skip_without_half_kernels
from test_vae_tiling import OOMAbove, Placement
from tiny_models import tiny_vae

from pisa_core import read_png_settings
from pisa_core.cli.main import main
from pisa_core.errors import PiSAError
from pisa_core.inference import vae_tiling
from pisa_core.inference.memory import MIN_VAE_TILE, with_backoff
from pisa_core.inference.pipeline import PiSAPipeline
from pisa_core.model import fast_decoder
from pisa_core.model.base import load_base_model
from pisa_core.model.checkpoint import load_pisa_weights
from pisa_core.model.fast_decoder import is_decoder_file, load_decoder

META = torch.device("meta")
PARITY = 1e-5


@pytest.fixture(scope="module")
def reference():
    return published_decoder(seed=3)


@pytest.fixture(scope="module")
def decoder_path(reference, tmp_path_factory):
    """The published layout with entries beside the two the reader needs (as a training script saves)."""
    return write_published(tmp_path_factory.mktemp("decoder") / "sd21_lwdecoder.pth", reference, epoch=7,
                           optimizer_lr=1e-4)


@pytest.fixture(scope="module")
def fast_pipe(model_dir, decoder_path):
    return PiSAPipeline.from_files(model_dir / "sd21-tiny", model_dir / "pisa_sr.pkl", device="cpu", dtype="fp32",
                                   decoder=decoder_path)


def reference_decode(model, latent):
    with torch.no_grad():
        return model(latent.float()).clamp(-1, 1)


def latent_with_regions(h, w, seed=0):
    latent = torch.randn(1, 4, h, w, generator=torch.Generator().manual_seed(seed))
    latent[:, :, : h // 2] = latent[:, :, : h // 2] * 0.2 + 1.5  # regions with different statistics
    return latent


# ---------------------------------------------------------------------------------- parity


@pytest.mark.parametrize("vae_tile", [0, 128])
def test_published_checkpoint_decodes_as_the_independent_structure(fast_pipe, reference, vae_tile):
    latent = latent_with_regions(24, 20)
    got = fast_pipe.decode(latent, vae_tile=vae_tile)
    assert got.shape == (1, 3, 192, 160)
    assert (got - reference_decode(reference, latent)).abs().max().item() <= PARITY


def test_the_pipeline_decodes_with_the_fast_decoder_only(fast_pipe, decoder_path):
    assert fast_pipe.vae.post_quant_conv is None
    assert fast_pipe.decoder.source == str(decoder_path)
    widths = [b.resnets[0].conv2.out_channels for b in fast_pipe.vae.decoder.up_blocks]
    assert widths == [64, 64, 32, 32] and len(fast_pipe.vae.decoder.up_blocks[0].resnets) == 3
    assert fast_pipe.vae.encoder.conv_in.out_channels == 32  # the base model's encoder stays


def test_tiled_equals_untiled_at_1024(fast_pipe):
    latent = latent_with_regions(128, 128, seed=1)
    whole = fast_pipe.decode(latent, vae_tile=1024)
    tiled = fast_pipe.decode(latent, vae_tile=256)
    assert (tiled - whole).abs().max().item() / 2 <= 2 / 255  # [-1, 1] -> [0, 1]


def test_the_whole_path_uses_it_with_colour_fix_and_region_lambda(fast_pipe, reference, lq_image):
    image = lq_image(20, 24, seed=2)
    lambda_map = torch.linspace(0.2, 1.4, 24).expand(20, 24)
    out = fast_pipe(image, lambda_pix=lambda_map, lambda_sem=0.7, color_fix="wavelet", process_size=0, vae_tile=128)
    pixels, plan = fast_pipe.prepare(image, process_size=0)
    latent = fast_pipe.encode(pixels)
    eps = fast_pipe.predict_eps(latent)
    z_high = fast_pipe.guide(latent, eps, lambda_map, 0.7, plan=plan)
    expected = fast_pipe.finish(reference_decode(reference, z_high), plan, color_fix="wavelet")
    assert out.shape == expected.shape == (1, 80, 96, 3)
    assert (out - expected).abs().max().item() <= 1e-4


def test_safetensors_round_trip_and_legacy_attention_names(decoder_path, reference, tmp_path):
    converted = tmp_path / "fast.safetensors"
    first = fast_decoder.convert_decoder(decoder_path, converted)
    again = load_decoder(converted)
    assert again.format == "pisa-safetensors" and again.config == first.config
    assert json.loads(fast_decoder.SafetensorsFile(converted, "x").metadata["config"]) == published_config()
    latent = latent_with_regions(8, 8)
    torch.testing.assert_close(again.decoder(latent), reference(latent), rtol=0, atol=0)
    legacy = {k.replace("to_q.", "query.").replace("to_out.0.", "proj_attn."): v
              for k, v in reference.state_dict().items()}
    torch.save({"config": published_config(), "model_state_dict": legacy}, tmp_path / "legacy.pth")
    torch.testing.assert_close(load_decoder(tmp_path / "legacy.pth").decoder(latent), reference(latent))


def test_structure_is_inferred_not_assumed(tmp_path):
    """Other widths and layer counts load from their shapes; the real size is the published one."""
    model = PublishedDecoder((32, 64, 96), layers_per_block=1)
    path = write_published(tmp_path / "other.pth", model, published_config((32, 64, 96), 1))
    assert load_decoder(path).config["block_out_channels"] == [32, 64, 96]
    with torch.device("meta"):
        real = PublishedDecoder()
    built = fast_decoder.build_decoder(real.state_dict(), published_config((64, 128, 256, 256)), "meta")
    assert built.config["layers_per_block"] == 2 and built.config["mid_block_add_attention"]


# ---------------------------------------------------------------------------------- decode features


def test_progress_per_tile_and_cancel(fast_pipe):
    latent = latent_with_regions(24, 32)
    ticks = []
    fast_pipe.decode(latent, vae_tile=128, progress=lambda d, t: ticks.append((d, t)))
    assert [d for d, _ in ticks] == list(range(1, len(ticks) + 1)) and len(ticks) > 20

    def cancel(done, _total):
        if done == 3:
            raise KeyboardInterrupt

    for tile in (128, 0):
        with pytest.raises(KeyboardInterrupt):
            fast_pipe.decode(latent, vae_tile=tile, progress=cancel)


def test_out_of_memory_halves_the_tile(fast_pipe):
    latent = latent_with_regions(24, 32)
    expected = fast_pipe.decode(latent, vae_tile=256)
    tried = []

    def decode(tile):
        tried.append(tile)
        return fast_pipe.decode(latent, vae_tile=tile)

    with OOMAbove(140):
        out = with_backoff(decode, 512, minimum=MIN_VAE_TILE, what="VAE decoder", release=lambda: None)
    assert tried == [512, 256, 128]
    assert (out - expected).abs().max().item() <= PARITY


def test_a_half_precision_overflow_falls_back_to_fp32(model_dir, decoder_path, lq_image, caplog):
    told: list[str] = []
    pipe = overflowing(model_dir, "decode", told, decoder=decoder_path)
    assert pipe.vae.decoder.conv_in.out_channels == 64  # the overflow is planted in the fast decoder
    with caplog.at_level(logging.WARNING, logger="pisa_core.inference.pipeline"):
        try:
            out = pipe(lq_image(16, 16), process_size=0)
        except RuntimeError as error:
            skip_without_half_kernels(error)
    assert torch.isfinite(out).all() and pipe.upcasts == ["vae"] and told == ["vae"]
    assert next(pipe.vae.decoder.parameters()).dtype == torch.float32


@pytest.mark.parametrize("vae_tile", [0, 128])
def test_meta_device_placement(model_dir, decoder_path, vae_tile):
    base = load_base_model(model_dir / "sd21-tiny")
    pipe = PiSAPipeline(base, load_pisa_weights(model_dir / "pisa_sr.pkl"), device="meta", dtype="fp32",
                        decoder=load_decoder(decoder_path))
    assert {p.device for p in pipe.vae.decoder.parameters()} == {META}
    latent = torch.zeros(1, 4, 16, 24)
    with Placement() as seen:
        decoded = pipe.decode(latent, vae_tile=vae_tile)
    assert decoded.device == META and decoded.shape == (1, 3, 128, 192)
    if vae_tile:  # tiles on the device, the full-size activations on the host
        on_device = [m for m in seen.made if m[0] == "meta" and (m[2], m[3]) != (16, 24) and m[1] > 4]
        assert max(h * w for _, _c, h, w in on_device) <= (vae_tile + 4) ** 2
        assert any((h, w) == (128, 192) and c > 3 for d, c, h, w in seen.made if d == "cpu")


# ---------------------------------------------------------------------------------- bad files


class NotATensor:
    pass


def bad_files(folder, reference):
    """{name: (path, what the message must say)}, each written in the way it goes wrong."""
    files = {}
    good = write_published(folder / "good.pth", reference)
    data = good.read_bytes()
    (folder / "truncated.pth").write_bytes(data[: len(data) // 2])
    files["truncated"] = (folder / "truncated.pth", "corrupted")
    damaged = bytearray(data)
    damaged[64:576] = bytes(512)  # inside the pickle, the archive's first record
    (folder / "damaged.pth").write_bytes(bytes(damaged))
    files["damaged"] = (folder / "damaged.pth", "corrupted")
    torch.save({"config": published_config(), "model_state_dict": reference.state_dict(), "hook": NotATensor()},
               folder / "code.pth")
    files["code"] = (folder / "code.pth", "would run code")
    torch.save(tiny_vae().state_dict(), folder / "vae.pth")
    files["full vae"] = (folder / "vae.pth", "full SD VAE")
    torch.save({"config": {}, "model_state_dict": {f"first_stage_model.{k}": v for k, v in
                                                     tiny_vae().state_dict().items()}}, folder / "ldm_vae.pth")
    files["full vae, ldm names"] = (folder / "ldm_vae.pth", "full SD VAE")
    with torch.device("cpu"):
        wide = PublishedDecoder((32, 32, 64, 64), latent_channels=16)
    files["16-channel latent"] = (write_published(folder / "flux.pth", wide, {}), "16-channel latent")
    torch.save({"model_state_dict": {"time_embedding.linear_1.weight": torch.zeros(4, 4)}}, folder / "unet.pth")
    files["unknown layout"] = (folder / "unet.pth", "unknown layout")
    torch.save({"weights": [1, 2]}, folder / "nothing.pth")
    files["no state"] = (folder / "nothing.pth", "no 'model_state_dict'")
    files["config disagrees"] = (write_published(folder / "lying.pth", reference, {**published_config(),
                                                                                   "layers_per_block": 3}),
                                 "config says layers_per_block 3")
    state = reference.state_dict()
    state.pop("up_blocks.1.upsamplers.0.conv.weight")
    torch.save({"config": published_config(), "model_state_dict": state}, folder / "missing.pth")
    files["missing tensor"] = (folder / "missing.pth", "lacks 'up_blocks.1.upsamplers.0.conv.weight'")
    state = reference.state_dict()
    state["conv_out.weight"] = torch.zeros(3, 48, 3, 3)
    torch.save({"config": published_config(), "model_state_dict": state}, folder / "shape.pth")
    files["wrong shape"] = (folder / "shape.pth", "'conv_out.weight' has shape (3, 48, 3, 3)")
    Image.new("RGB", (4, 4)).save(folder / "image.pth", format="PNG")
    files["an image"] = (folder / "image.pth", "PNG image")
    return files


@pytest.fixture(scope="module")
def bad(reference, tmp_path_factory):
    return bad_files(tmp_path_factory.mktemp("bad_decoders"), reference)


BAD = ["truncated", "damaged", "code", "full vae", "full vae, ldm names", "16-channel latent", "unknown layout",
       "no state", "config disagrees", "missing tensor", "wrong shape", "an image"]


@pytest.mark.parametrize("name", BAD)
def test_bad_files_are_one_line_errors_naming_the_file(bad, name):
    path, fragment = bad[name]
    with pytest.raises(PiSAError) as caught:
        load_decoder(path)
    message = str(caught.value)
    assert str(path) in message and fragment in message and "\n" not in message, message


@pytest.mark.parametrize("name", ["code", "full vae", "16-channel latent"])
def test_the_api_checks_the_decoder_before_the_base_model(bad, model_dir, name):
    path, fragment = bad[name]
    with pytest.raises(PiSAError, match=fragment):
        PiSAPipeline.from_files(model_dir / "missing-base", model_dir / "pisa_sr.pkl", decoder=path)


@pytest.mark.parametrize("name", ["truncated", "code", "full vae", "16-channel latent", "unknown layout"])
def test_the_cli_refuses_a_bad_decoder_before_the_model_loads(bad, model_dir, tmp_path, capsys, name):
    path, fragment = bad[name]
    source = tmp_path / "in.png"
    Image.new("RGB", (8, 8)).save(source)
    code = main(["upscale", str(source), "-o", str(tmp_path / "out"), *model_args(model_dir), *NO_MODEL,
                 "--decoder", str(path)])
    one_line_error(capsys, code, str(path), fragment)


def test_is_decoder_file_by_content(decoder_path, bad, model_dir, tmp_path):
    fast_decoder.convert_decoder(decoder_path, tmp_path / "fast.safetensors")
    renamed = tmp_path / "no_extension"
    renamed.write_bytes(decoder_path.read_bytes())
    for path in (decoder_path, tmp_path / "fast.safetensors", renamed):
        assert is_decoder_file(path), path
    others = [model_dir / "pisa_sr.pkl", model_dir / "pisa_sr.safetensors", model_dir / "sd21-tiny.safetensors",
              bad["truncated"][0], bad["full vae"][0], bad["an image"][0], tmp_path / "missing.pth", tmp_path]
    for path in others:
        assert not is_decoder_file(path), path


def test_is_decoder_file_unpickles_nothing(decoder_path, monkeypatch):
    def refuse(*_args, **_kwargs):
        raise AssertionError("is_decoder_file must not unpickle")

    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    assert is_decoder_file(decoder_path)
    with zipfile.ZipFile(decoder_path) as archive:  # the tensors are separate records it does not read
        assert len(archive.namelist()) > 10


# ---------------------------------------------------------------------------------- CLI


def test_cli_upscale_with_the_decoder_names_it_in_the_settings(model_dir, decoder_path, tmp_path, monkeypatch):
    source = tmp_path / "in.png"
    Image.fromarray((np.random.default_rng(0).random((10, 12, 3)) * 255).astype(np.uint8)).save(source)
    assert main(["upscale", str(source), "-o", str(tmp_path / "a.png"), *model_args(model_dir),
                 "--decoder", str(decoder_path)]) == 0
    assert read_png_settings(tmp_path / "a.png")["decoder"] == {"file": decoder_path.name,
                                                            "bytes": decoder_path.stat().st_size}
    monkeypatch.setenv("PISA_SR_DECODER", str(decoder_path))
    assert main(["upscale", str(source), "-o", str(tmp_path / "b.png"), *model_args(model_dir)]) == 0
    assert read_png_settings(tmp_path / "b.png")["decoder"]["file"] == decoder_path.name
    monkeypatch.delenv("PISA_SR_DECODER")
    assert main(["upscale", str(source), "-o", str(tmp_path / "c.png"), *model_args(model_dir)]) == 0
    assert read_png_settings(tmp_path / "c.png")["decoder"] == fast_decoder.BASE_DECODER


def test_cli_convert_and_info(decoder_path, tmp_path, capsys):
    target = tmp_path / "fast.safetensors"
    assert main(["convert", str(decoder_path), str(target)]) == 0
    capsys.readouterr()
    assert main(["info", str(target), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "pisa-safetensors" and info["block_out_channels"] == [32, 32, 64, 64]
    assert main(["info", str(decoder_path)]) == 0
    text = capsys.readouterr().out
    assert "fast decoder" in text and "widths: 32, 32, 64, 64; 3 resnets per up block" in text
    code = main(["convert", str(decoder_path), str(tmp_path / "fast.pkl")])
    one_line_error(capsys, code, "fast.pkl", ".safetensors")


def test_the_settings_helper_for_front_ends(decoder_path):
    assert fast_decoder.decoder_setting(None) == fast_decoder.BASE_DECODER
    assert fast_decoder.decoder_setting(load_decoder(decoder_path))["file"] == decoder_path.name


def test_the_walker_handles_the_fast_decoder_unchanged(reference):
    """vae_tiling walks the Decoder itself: no post_quant_conv op, the same resnets and upsamplers."""
    holder = torch.nn.Module()
    holder.decoder, holder.post_quant_conv = fast_decoder.build_decoder(reference.state_dict(), None, "x").decoder, None
    ops = vae_tiling.decoder_ops(holder)
    assert ops[0].keywords["conv"] is holder.decoder.conv_in
    latent = latent_with_regions(8, 12)
    got = vae_tiling.run_tiled(holder, "decoder", latent, tile=32, full=(64, 96), device="cpu")
    assert (got - reference(latent)).abs().max() <= PARITY


def test_is_decoder_file_answers_false_for_any_damage(decoder_path, tmp_path):
    data = decoder_path.read_bytes()
    g = np.random.default_rng(5)
    target = tmp_path / "damaged.pth"
    for cut in np.linspace(0, len(data), 24, dtype=int)[:-1]:
        target.write_bytes(data[:cut])
        assert not is_decoder_file(target)
    for _ in range(24):
        damaged = bytearray(data[:4096])
        for position in g.integers(0, len(damaged), 8):
            damaged[position] = int(g.integers(0, 256))
        target.write_bytes(bytes(damaged) + data[4096:])
        assert is_decoder_file(target) in (True, False)  # no exception, whatever the bytes


def test_is_decoder_file_refuses_compressed_or_encrypted_records(decoder_path, tmp_path):
    """Fuzz finding: a data.pkl record with another compression method made zipfile raise
    NotImplementedError; torch stores its records uncompressed, so such a file is not a decoder."""
    with zipfile.ZipFile(decoder_path) as source, zipfile.ZipFile(tmp_path / "deflated.pth", "w") as target:
        for info in source.infolist():
            target.writestr(info.filename, source.read(info), compress_type=zipfile.ZIP_DEFLATED)
    assert not is_decoder_file(tmp_path / "deflated.pth")
    data = bytearray((tmp_path / "deflated.pth").read_bytes())
    data[data.index(b"PK\x01\x02") + 10] = 99  # the central directory names method 99 (AES)
    (tmp_path / "method99.pth").write_bytes(bytes(data))
    assert not is_decoder_file(tmp_path / "method99.pth")
    data[data.index(b"PK\x01\x02") + 6] = 104  # "needs zip version 10.4": zipfile raised NotImplementedError
    (tmp_path / "version.pth").write_bytes(bytes(data))
    assert not is_decoder_file(tmp_path / "version.pth")
